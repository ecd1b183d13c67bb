"""tests/deploy imports its helpers as `deploy_support` (this folder is on sys.path, as tests/ops's is)."""
