"""Operations tooling beside the service: the benchmark (`python -m ops.bench`, `make bench`)."""
