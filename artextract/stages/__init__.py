"""Ray-agnostic batch stages: functions or classes over one batch. They never import ray, so
each is unit-testable on a few rows and benchmarkable on a GPU machine without Ray."""
