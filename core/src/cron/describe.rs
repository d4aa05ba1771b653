//! Plain-words descriptions of schedules, e.g. "at 03:00 every day".
use super::spec::Spec;

pub(super) fn describe(_spec: &Spec) -> String {
    String::new()
}
