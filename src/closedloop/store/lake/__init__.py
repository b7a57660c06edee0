"""The cold tier: Parquet files on a local folder or any fsspec store (S3), with a manifest."""
