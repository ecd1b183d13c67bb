"""Operations tooling beside the service: the benchmark (`python -m ops.bench`, `make bench`) and the docs
generated from the code (`python -m ops.docs.configuration`, `make docs`)."""
