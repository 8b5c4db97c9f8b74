"""What a user is told of a thread-mode run that ignores its stop (the worker's log line, the CLI)."""

OVERDUE_ADVICE = (
    "code in a thread cannot be stopped by force: give it isolation='process' "
    "(ProcessDefinition(..., isolation='process')) so that an ignored stop ends it"
)
#: The record's (and the run's) error while its stop is overdue; the run's end replaces it.
OVERDUE_ERROR = f"stop overdue: the code ignores the stop; {OVERDUE_ADVICE}"
