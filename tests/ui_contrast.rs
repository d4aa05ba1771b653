//! The UI's stylesheet meets WCAG AA contrast (4.5:1 for normal text) in
//! both colour schemes: every state badge's text on its colour, body and
//! muted text on the page and on cards, links, buttons. Read from
//! `ui/static/app.css` itself, so a colour edit that breaks it fails here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

const CSS: &str = include_str!("../ui/static/app.css");
const AA: f64 = 4.5;

/// `--name: #rrggbb` declarations of the block starting at `start`.
fn vars_after(start: &str) -> HashMap<String, String> {
    let at = CSS.find(start).expect("block");
    let body = &CSS[at..];
    let body = &body[..body.find('}').expect("block end")];
    body.split(';')
        .filter_map(|d| {
            let d = d.trim();
            let d = d.rsplit_once('\n').map_or(d, |(_, last)| last).trim();
            let (name, value) = d.split_once(':')?;
            let name = name.trim().strip_prefix("--")?;
            let value = value.trim();
            value
                .starts_with('#')
                .then(|| (name.to_owned(), value.to_owned()))
        })
        .collect()
}

fn luminance(hex: &str) -> f64 {
    let hex = hex.trim_start_matches('#');
    let hex = if hex.len() == 3 {
        hex.chars().flat_map(|c| [c, c]).collect::<String>()
    } else {
        hex.to_owned()
    };
    let channel = |i: usize| {
        let c = f64::from(u8::from_str_radix(&hex[i..i + 2], 16).unwrap()) / 255.0;
        if c <= 0.03928 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    0.2126 * channel(0) + 0.7152 * channel(2) + 0.0722 * channel(4)
}

fn contrast(a: &str, b: &str) -> f64 {
    let (la, lb) = (luminance(a), luminance(b));
    (la.max(lb) + 0.05) / (la.min(lb) + 0.05)
}

#[test]
fn every_state_badge_has_aa_contrast() {
    let light = vars_after(":root {");
    let white = "#ffffff";
    for state in [
        "success",
        "failed",
        "running",
        "queued",
        "ready",
        "assigned",
        "up_for_retry",
        "upstream_failed",
        "cancelled",
        "lost",
    ] {
        let c = contrast(&light[state], white);
        assert!(c >= AA, "white on --{state} {} is {c:.2}:1", light[state]);
    }
    for state in ["skipped", "pending"] {
        let c = contrast(&light[state], &light["fg-on-light"]);
        assert!(c >= AA, "--fg-on-light on --{state} is {c:.2}:1");
    }
    let c = contrast(&light["button"], white);
    assert!(c >= AA, "button text is {c:.2}:1");
}

#[test]
fn text_links_and_muted_text_have_aa_contrast_in_light_and_dark_mode() {
    let light = vars_after(":root {");
    let mut dark = light.clone();
    dark.extend(vars_after(
        "@media (prefers-color-scheme: dark) {\n  :root {",
    ));
    assert_ne!(dark["bg"], light["bg"], "a dark scheme exists");
    for (scheme, v) in [("light", &light), ("dark", &dark)] {
        for fg in ["fg", "muted", "accent"] {
            for bg in ["bg", "card"] {
                let c = contrast(&v[fg], &v[bg]);
                assert!(c >= AA, "{scheme}: --{fg} on --{bg} is {c:.2}:1");
            }
        }
        let c = contrast(&v["tag-fg"], &v["tag-bg"]);
        assert!(c >= AA, "{scheme}: tags are {c:.2}:1");
    }
}
