"""The lake: Delta Lake tables on local disk or S3-compatible storage (delta-rs `deltalake`).

`location` names where the lake lives, `table` opens its tables with one-line errors, `commit` is
the one commit protocol (a range's rows, its Kafka offsets and its accounting in one Delta commit),
`history` reads committed ranges back from the log, `audit` proves exactly-once from the log and
the files, `migrate` turns a lake of the earlier file-and-manifest layout into a Delta table.
"""
