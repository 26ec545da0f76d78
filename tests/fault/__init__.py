"""Fault injection: real workers, brokers, databases and S3 servers killed or cut off mid-job."""
