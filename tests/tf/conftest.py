"""The TensorFlow suite's hook: the assertions in the helpers it shares with the other framework's suite
(tests/flax_tf_common.py) are rewritten as the tests' own are, so that a failing one shows its values."""

import pytest

pytest.register_assert_rewrite("flax_tf_common")
