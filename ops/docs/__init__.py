"""Documentation generated from the code: `python -m ops.docs.configuration` (`make docs`)."""
