"""Pure PyTorch algorithms for facejobs: no HTTP, Celery, SQL or S3 in here."""
