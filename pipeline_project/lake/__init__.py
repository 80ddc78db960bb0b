"""The lake's storage: a local S3 server (versitygw) for development and tests."""
