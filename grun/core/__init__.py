"""Pure decisions with no I/O: job records, the job state machine, placement."""
