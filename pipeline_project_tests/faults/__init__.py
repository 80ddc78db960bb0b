"""Fault suite (issue 7): broker, disk, zombie and retention faults; chaos loop and soak run."""
