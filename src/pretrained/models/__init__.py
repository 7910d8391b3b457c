"""Model families: one folder per `model_type`."""
