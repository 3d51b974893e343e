"""Artifacts in object storage: the S3 client with the steps' failure reasons (s3) and the
download of inputs / upload of outputs with a manifest (transfer). Used by cli.run_step when
the operator runs a step in S3 mode; boto3 is imported only then."""
