"""The worker runtime: partition ownership, the partition loop and both halves of a step
(orchestrations, entities), the activity runner, poison isolation, inbox decoding, metrics."""
