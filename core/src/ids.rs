//! Typed identifiers (newtypes) for DAGs, runs, task instances, attempts and workers.
