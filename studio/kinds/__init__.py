"""Job kinds: the base (JobKind), the registry, the shared training skeleton and trackers, and one
package per kind (distillation, consistency, personalization, evaluation), as peft has one per tuner."""
