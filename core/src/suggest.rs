//! "Did you mean …?" for a name a person typed that is not one of the known
//! ones (a DAG id, a param name): the closest known name within a small edit
//! distance, so a typo gets its fix and a different word gets no guess.

/// The known name closest to `given`, when it is within 2 edits (or a third
/// of its length, for long names) and not `given` itself.
pub fn closest<'a, I>(given: &str, known: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let limit = 2.max(given.chars().count() / 3);
    known
        .into_iter()
        .filter(|k| *k != given)
        .map(|k| (strsim::levenshtein(k, given), k))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, k)| k)
}

/// `"; did you mean `x`?"`, or an empty string when nothing is close.
pub fn did_you_mean<'a, I>(given: &str, known: I) -> String
where
    I: IntoIterator<Item = &'a str>,
{
    closest(given, known)
        .map(|k| format!("; did you mean `{k}`?"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_gets_the_nearest_name_and_a_different_word_gets_none() {
        let known = ["churn_retrain", "bench_chain", "bench_fanout"];
        assert_eq!(closest("churn_retrian", known), Some("churn_retrain"));
        assert_eq!(closest("bench_chian", known), Some("bench_chain"));
        assert_eq!(closest("nightly", known), None);
        assert_eq!(did_you_mean("nightly", known), "");
        assert_eq!(
            did_you_mean("forse_bad_model", ["force_bad_model", "min_auc"]),
            "; did you mean `force_bad_model`?"
        );
    }
}
