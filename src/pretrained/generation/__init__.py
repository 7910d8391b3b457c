"""Generation: caches now; GenerationMixin and GenerationConfig arrive with the generation issue."""
