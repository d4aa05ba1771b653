//! Which argv elements a shell or interpreter runs as code.
//!
//! Placeholders are substituted inside one argv element and never re-parsed
//! by Trainyard, but an element that a program itself runs as code — the
//! script after `sh -c`, the code after `python3 -c` or `perl -e` — would
//! turn a param value such as `x; id` into code. [`risky_elements`] finds
//! those elements so validation can refuse placeholders in them.
//!
//! The program is `argv[0]` by its basename (`/bin/bash`, `python3.11`,
//! `perl5.36`: a trailing version is ignored), or the program an `env`
//! prefix runs (`/usr/bin/env -i bash -c …`). For that program the rule
//! also covers its option position: an element starting with a placeholder
//! where `perl` still reads switches could become `-e CODE`. Elsewhere in
//! argv (`timeout 60 bash -c …`, `docker exec box sh -c …`) the first
//! interpreter found is checked for its code element only, which keeps
//! `apt-get install python3 {{ params.pkg }}` valid.
//!
//! After the code, shells and Python stop reading options: what follows is
//! `$0 $1 …` or `sys.argv`, plain data. Perl, Ruby and Node keep reading
//! switches until `--` or a plain argument, so elements there that start
//! with a placeholder are refused unless a `--` comes first.

use super::render::{Placeholder, occurrences};

/// A family of programs that share how they take code on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// `sh`, `bash`, `dash`, `zsh`, `ksh`, …: `-c SCRIPT`.
    Shell,
    /// `python`, `python3`, `pypy3`: `-c CODE`.
    Python,
    /// `perl`: `-e CODE` / `-E CODE`, repeatable.
    Perl,
    /// `ruby`: `-e CODE`, repeatable.
    Ruby,
    /// `node`: `-e`/`--eval`/`-p`/`--print CODE`.
    Node,
    /// `env -S STRING`: env splits the string into program and arguments.
    EnvSplit,
}

/// Why an element is risky.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The program runs this element as code.
    Code,
    /// The program still reads options here, so a value starting with `-`
    /// would be taken as one (and some options take code).
    OptionPosition,
}

/// One element of argv that must not hold placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Risky {
    /// Index in argv.
    pub(crate) index: usize,
    pub(crate) role: Role,
    pub(crate) family: Family,
    /// How the program was written, by basename (`bash`, `python3.11`, `env`).
    pub(crate) program: String,
    /// The option that takes the code (`-c`, `-e`, `--eval`, `-S`); empty
    /// for an option-position finding.
    pub(crate) flag: &'static str,
}

/// The last path component of `program`.
fn basename(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

/// The family of a program name, ignoring its folder and a trailing version.
pub(crate) fn family_of(program: &str) -> Option<Family> {
    let stem = basename(program).trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    match stem {
        "sh" | "bash" | "dash" | "zsh" | "ksh" | "ash" | "mksh" | "fish" | "csh" | "tcsh" => {
            Some(Family::Shell)
        }
        "python" | "pypy" => Some(Family::Python),
        "perl" => Some(Family::Perl),
        "ruby" => Some(Family::Ruby),
        "node" | "nodejs" => Some(Family::Node),
        _ => None,
    }
}

fn starts_with_placeholder(arg: &str) -> bool {
    occurrences(arg).first().is_some_and(|o| o.range.start == 0)
}

fn has_placeholder(arg: &str) -> bool {
    !occurrences(arg).is_empty()
}

/// Every element of `argv` that a shell or interpreter would run as code or
/// read as an option, in argv order. Elements are reported whether or not
/// they hold placeholders; the caller checks that.
pub(crate) fn risky_elements(argv: &[String]) -> Vec<Risky> {
    let mut out = Vec::new();
    let Some(first) = argv.first() else {
        return out;
    };
    let program = if basename(first) == "env" {
        env_program(argv, &mut out)
    } else {
        0
    };
    if let Some(family) = argv.get(program).and_then(|p| family_of(p)) {
        scan(argv, program, family, true, &mut out);
    } else if let Some((i, family)) = argv
        .iter()
        .enumerate()
        .skip(program + 1)
        .find_map(|(i, a)| family_of(a).map(|f| (i, f)))
    {
        scan(argv, i, family, false, &mut out);
    }
    out
}

/// Walks `env`'s options and assignments; returns the index of the program
/// it runs (`argv.len()` if none). `-S STRING` is recorded as code.
fn env_program(argv: &[String], out: &mut Vec<Risky>) -> usize {
    let split = |index| Risky {
        index,
        role: Role::Code,
        family: Family::EnvSplit,
        program: basename(&argv[0]).to_owned(),
        flag: "-S",
    };
    let mut j = 1;
    while let Some(a) = argv.get(j) {
        match a.as_str() {
            "--" => return j + 1,
            "-S" | "--split-string" => {
                if j + 1 < argv.len() {
                    out.push(split(j + 1));
                }
                j += 2;
            }
            "-u" | "--unset" | "-C" | "--chdir" => j += 2,
            _ if a.starts_with("--split-string=") || (a.starts_with("-S") && a.len() > 2) => {
                out.push(split(j));
                j += 1;
            }
            _ if a.starts_with('-') && a.len() > 1 => j += 1,
            _ if a.contains('=') => j += 1,
            _ => return j,
        }
    }
    j
}

/// Records the code element(s) of the interpreter at `at`, and, when it is
/// the program itself (`options`), the elements in its option position.
fn scan(argv: &[String], at: usize, family: Family, options: bool, out: &mut Vec<Risky>) {
    let program = basename(&argv[at]).to_owned();
    let mut push = |index: usize, role: Role, flag: &'static str| {
        if role == Role::Code || options {
            out.push(Risky {
                index,
                role,
                family,
                program: program.clone(),
                flag,
            });
        }
    };
    match family {
        Family::Shell => scan_shell(argv, at + 1, &mut push),
        Family::Python => scan_python(argv, at + 1, &mut push),
        Family::Perl | Family::Ruby | Family::Node => {
            scan_switches(argv, at + 1, family, &mut push)
        }
        Family::EnvSplit => {}
    }
}

/// `sh [options] -c SCRIPT [NAME [ARG…]]`: `-c` may sit anywhere among the
/// options (`-ec`, `-lc`, `--login -c`), the script is the first operand.
fn scan_shell(argv: &[String], mut j: usize, push: &mut impl FnMut(usize, Role, &'static str)) {
    let mut code = false;
    while let Some(a) = argv.get(j) {
        if a == "--" || a == "-" {
            j += 1;
            break;
        }
        if starts_with_placeholder(a) {
            break;
        }
        if let Some(long) = a.strip_prefix("--") {
            if has_placeholder(a) {
                push(j, Role::OptionPosition, "");
            }
            j += if matches!(long, "rcfile" | "init-file") {
                2
            } else {
                1
            };
            continue;
        }
        if (a.starts_with('-') || a.starts_with('+')) && a.len() > 1 {
            if has_placeholder(a) {
                push(j, Role::OptionPosition, "");
            }
            let mut values = 0;
            for ch in a[1..].chars() {
                match ch {
                    'c' if a.starts_with('-') => code = true,
                    // `-o pipefail`, bash's `-O extglob`: the name follows.
                    'o' | 'O' => values += 1,
                    _ => {}
                }
            }
            j += 1 + values;
            continue;
        }
        break;
    }
    if j < argv.len() {
        if code {
            push(j, Role::Code, "-c");
        } else if starts_with_placeholder(&argv[j]) {
            // The script file's name: a value like `-c…` would become an option.
            push(j, Role::OptionPosition, "");
        }
    }
}

/// `python [options] -c CODE [ARG…]` (also `-cCODE` and `-Bc CODE`); `-m`,
/// a script or `-` end the options and everything after is `sys.argv`.
fn scan_python(argv: &[String], mut j: usize, push: &mut impl FnMut(usize, Role, &'static str)) {
    while let Some(a) = argv.get(j) {
        if a == "--" || a == "-" || starts_with_placeholder(a) {
            if starts_with_placeholder(a) {
                push(j, Role::OptionPosition, "");
            }
            return;
        }
        if a.starts_with("--") {
            if has_placeholder(a) {
                push(j, Role::OptionPosition, "");
            }
            j += if a == "--check-hash-based-pycs" { 2 } else { 1 };
            continue;
        }
        if !(a.starts_with('-') && a.len() > 1) {
            return; // the script
        }
        let body = &a[1..];
        let mut skip = 0;
        for (k, ch) in body.char_indices() {
            let rest = &body[k + ch.len_utf8()..];
            match ch {
                'c' => {
                    if rest.is_empty() {
                        if j + 1 < argv.len() {
                            push(j + 1, Role::Code, "-c");
                        }
                    } else {
                        push(j, Role::Code, "-c");
                    }
                    return;
                }
                'm' => return,
                'W' | 'X' => {
                    if rest.is_empty() {
                        skip = 1;
                    }
                    break;
                }
                _ => {}
            }
        }
        if has_placeholder(a) {
            push(j, Role::OptionPosition, "");
        }
        j += 1 + skip;
    }
}

/// Perl, Ruby and Node: code options may repeat and switches are read until
/// `--` or the first plain argument (the script, or the first data element
/// after `-e`), so a placeholder there could become a switch.
fn scan_switches(
    argv: &[String],
    mut j: usize,
    family: Family,
    push: &mut impl FnMut(usize, Role, &'static str),
) {
    while let Some(a) = argv.get(j) {
        if a == "--" {
            return;
        }
        if starts_with_placeholder(a) {
            push(j, Role::OptionPosition, "");
            j += 1;
            continue;
        }
        if !(a.starts_with('-') && a.len() > 1) {
            return;
        }
        let (code, skip) = match family {
            Family::Node => node_option(a),
            _ => cluster_option(a, family),
        };
        match code {
            Some((CodeAt::Next, flag)) => {
                if j + 1 < argv.len() {
                    push(j + 1, Role::Code, flag);
                }
                j += 2;
                continue;
            }
            Some((CodeAt::Here, flag)) => push(j, Role::Code, flag),
            None if has_placeholder(a) => push(j, Role::OptionPosition, ""),
            None => {}
        }
        j += 1 + skip;
    }
}

/// Where an option's code is: the next element, or the rest of this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CodeAt {
    Next,
    Here,
}

/// Node's options are whole words: `-e CODE`, `--eval=CODE`, `-pe CODE`.
/// Returns the code's place, or how many following elements are the
/// option's value.
fn node_option(a: &str) -> (Option<(CodeAt, &'static str)>, usize) {
    match a {
        "-e" | "-pe" | "-ep" => (Some((CodeAt::Next, "-e")), 0),
        "--eval" => (Some((CodeAt::Next, "--eval")), 0),
        "-p" => (Some((CodeAt::Next, "-p")), 0),
        "--print" => (Some((CodeAt::Next, "--print")), 0),
        "-r"
        | "--require"
        | "--import"
        | "--loader"
        | "--experimental-loader"
        | "-C"
        | "--conditions"
        | "--input-type"
        | "--env-file"
        | "--title" => (None, 1),
        _ if a.starts_with("--eval=") => (Some((CodeAt::Here, "--eval")), 0),
        _ if a.starts_with("--print=") => (Some((CodeAt::Here, "--print")), 0),
        _ => (None, 0),
    }
}

/// Perl and Ruby take clustered switches (`-lne CODE`, `-pi.bak`), some with
/// a value attached (`-Mstrict`, `-rjson`) or, for Ruby, following.
fn cluster_option(a: &str, family: Family) -> (Option<(CodeAt, &'static str)>, usize) {
    if a.starts_with("--") {
        return (None, 0);
    }
    let body = &a[1..];
    let mut digits_of: Option<char> = None;
    for (k, ch) in body.char_indices() {
        // `-l` and `-0` take optional digits (`-l015`, `-0777`), then the
        // cluster goes on (`-lne`).
        if digits_of.is_some() && ch.is_ascii_digit() {
            continue;
        }
        digits_of = None;
        if ch == '0' || (family == Family::Perl && ch == 'l') {
            digits_of = Some(ch);
            continue;
        }
        let rest = &body[k + ch.len_utf8()..];
        let code_flag = match (family, ch) {
            (Family::Perl, 'e') | (Family::Ruby, 'e') => Some("-e"),
            (Family::Perl, 'E') => Some("-E"),
            _ => None,
        };
        if let Some(flag) = code_flag {
            let at = if rest.is_empty() {
                CodeAt::Next
            } else {
                CodeAt::Here
            };
            return (Some((at, flag)), 0);
        }
        let takes_value = match family {
            Family::Perl => "iIMmFxCDVd".contains(ch),
            _ => "CEFIirWxTK".contains(ch),
        };
        if takes_value {
            let separate = family == Family::Ruby && rest.is_empty() && "CEIr".contains(ch);
            return (None, usize::from(separate));
        }
    }
    (None, 0)
}

impl Risky {
    /// What is wrong with `written` (a placeholder in this element) and what
    /// to write instead, in the program's own language.
    pub(crate) fn message(&self, written: &str, placeholder: &Placeholder) -> String {
        let lang = Lang::of(self.family);
        let (var, builtin) = match placeholder {
            Placeholder::Param(p) => (p.to_ascii_uppercase(), false),
            Placeholder::LogicalDate => ("TRAINYARD_LOGICAL_DATE".to_owned(), true),
            Placeholder::RunId => ("TRAINYARD_RUN_ID".to_owned(), true),
            Placeholder::DagId => ("TRAINYARD_DAG_ID".to_owned(), true),
            Placeholder::TaskId => ("TRAINYARD_TASK_ID".to_owned(), true),
        };
        let read = (lang.env)(&var);
        let instead = if builtin {
            format!("read it from the environment instead: every task has {var}, e.g. {read}")
        } else {
            format!(
                "pass the value through `env` instead: env = {{ {var} = \"{written}\" }} and {read} in the {what}, or as an argument after the {what}, read as {arg}",
                what = lang.what,
                arg = lang.arg,
            )
        };
        let program = &self.program;
        match self.role {
            Role::Code => format!(
                "placeholder `{written}` is inside the {what} that `{program} {flag}` runs, so a value such as {inject} would run as {code}; {instead}",
                what = lang.what,
                flag = self.flag,
                inject = lang.injection,
                code = lang.code,
            ),
            Role::OptionPosition => format!(
                "placeholder `{written}` is where `{program}` still reads options, so a value starting with `-` (such as {opt}) would be taken as an option and could run code; put \"--\" before arguments that come from placeholders, or {instead}",
                opt = lang.option_example,
            ),
        }
    }
}

/// How a program's code reads env and arguments, for messages.
struct Lang {
    /// What the program runs: "script" or "code".
    what: &'static str,
    /// The kind of code a hostile value would become.
    code: &'static str,
    injection: &'static str,
    option_example: &'static str,
    env: fn(&str) -> String,
    arg: &'static str,
}

impl Lang {
    fn of(family: Family) -> Lang {
        match family {
            Family::Shell | Family::EnvSplit => Lang {
                what: "script",
                code: "shell code",
                injection: "`x; id`",
                option_example: "`-c id`",
                env: |v| format!("\"${v}\""),
                arg: "\"$1\" (the element right after the script is $0)",
            },
            Family::Python => Lang {
                what: "code",
                code: "Python code",
                injection: "`\"); import os; os.system(\"id\") #`",
                option_example: "`-cimport os`",
                env: |v| format!("os.environ[\"{v}\"]"),
                arg: "sys.argv[1]",
            },
            Family::Perl => Lang {
                what: "code",
                code: "Perl code",
                injection: "`\"; system(\"id\"); \"`",
                option_example: "`-esystem(\"id\")`",
                env: |v| format!("$ENV{{{v}}}"),
                arg: "$ARGV[0]",
            },
            Family::Ruby => Lang {
                what: "code",
                code: "Ruby code",
                injection: "`\"; system(\"id\"); \"`",
                option_example: "`-esystem(\"id\")`",
                env: |v| format!("ENV[\"{v}\"]"),
                arg: "ARGV[0]",
            },
            Family::Node => Lang {
                what: "code",
                code: "JavaScript",
                injection: "`\"); require(\"child_process\").execSync(\"id\"); (\"`",
                option_example: "`--eval=…`",
                env: |v| format!("process.env.{v}"),
                arg: "process.argv[1]",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    /// (index, role) of every risky element.
    fn risky(items: &[&str]) -> Vec<(usize, Role)> {
        risky_elements(&argv(items))
            .into_iter()
            .map(|r| (r.index, r.role))
            .collect()
    }

    const CODE: Role = Role::Code;
    const OPT: Role = Role::OptionPosition;

    #[test]
    fn families_ignore_folders_and_versions() {
        for (name, family) in [
            ("sh", Family::Shell),
            ("/bin/bash", Family::Shell),
            ("/usr/local/bin/zsh", Family::Shell),
            ("dash", Family::Shell),
            ("ksh93", Family::Shell),
            ("python", Family::Python),
            ("python3", Family::Python),
            ("/opt/venv/bin/python3.11", Family::Python),
            ("pypy3", Family::Python),
            ("perl5.36", Family::Perl),
            ("ruby3.2", Family::Ruby),
            ("node", Family::Node),
            ("nodejs", Family::Node),
        ] {
            assert_eq!(family_of(name), Some(family), "{name}");
        }
        for name in ["shasum", "bashful", "python-config", "train.py", "env"] {
            assert_eq!(family_of(name), None, "{name}");
        }
    }

    #[test]
    fn the_script_after_dash_c_is_code_and_what_follows_is_data() {
        assert_eq!(
            risky(&["sh", "-c", "echo $1", "sh", "{{ x }}"]),
            [(2, CODE)]
        );
        assert_eq!(risky(&["bash", "-lc", "s"]), [(2, CODE)]);
        assert_eq!(
            risky(&["bash", "-e", "-o", "pipefail", "-c", "s"]),
            [(5, CODE)]
        );
        assert_eq!(risky(&["bash", "--login", "-c", "s"]), [(3, CODE)]);
        assert_eq!(risky(&["sh", "-c", "--", "s"]), [(3, CODE)]);
        assert_eq!(risky(&["/bin/bash", "script.sh", "{{ x }}"]), []);
    }

    #[test]
    fn python_code_may_be_attached_or_clustered() {
        assert_eq!(
            risky(&["python3", "-c", "print(1)", "{{ x }}"]),
            [(2, CODE)]
        );
        assert_eq!(risky(&["python3", "-cprint(1)"]), [(1, CODE)]);
        assert_eq!(risky(&["python3", "-u", "-Bc", "c"]), [(3, CODE)]);
        assert_eq!(risky(&["python3", "-W", "ignore", "-c", "c"]), [(4, CODE)]);
        assert_eq!(risky(&["python3", "train.py", "-c", "{{ x }}"]), []);
        assert_eq!(risky(&["python3", "-m", "pkg", "-c", "{{ x }}"]), []);
    }

    #[test]
    fn perl_ruby_and_node_code_options_repeat_and_switches_continue() {
        assert_eq!(
            risky(&["perl", "-e", "a", "-E", "b", "data"]),
            [(2, CODE), (4, CODE)]
        );
        assert_eq!(risky(&["perl", "-lne", "print"]), [(2, CODE)]);
        assert_eq!(risky(&["perl", "-0777", "-ne", "print"]), [(3, CODE)]);
        assert_eq!(risky(&["perl", "-l015e", "print"]), [(2, CODE)]);
        assert_eq!(risky(&["ruby", "-lne", "print"]), [(2, CODE)]);
        assert_eq!(risky(&["perl", "-Mstrict", "-e", "c"]), [(3, CODE)]);
        assert_eq!(risky(&["ruby", "-r", "json", "-e", "c"]), [(4, CODE)]);
        assert_eq!(risky(&["ruby", "-E", "UTF-8", "-e", "c"]), [(4, CODE)]);
        assert_eq!(risky(&["node", "--eval", "c"]), [(2, CODE)]);
        assert_eq!(risky(&["node", "--eval=c"]), [(1, CODE)]);
        assert_eq!(risky(&["node", "-p", "c"]), [(2, CODE)]);
        // A placeholder where switches are still read could render to `-e…`.
        assert_eq!(
            risky(&["perl", "-e", "c", "{{ x }}"]),
            [(2, CODE), (3, OPT)]
        );
        assert_eq!(risky(&["node", "-e", "c", "--", "{{ x }}"]), [(2, CODE)]);
        assert_eq!(risky(&["perl", "-e", "c", "plain", "{{ x }}"]), [(2, CODE)]);
    }

    #[test]
    fn env_prefixes_are_looked_through() {
        assert_eq!(risky(&["/usr/bin/env", "bash", "-c", "s"]), [(3, CODE)]);
        assert_eq!(
            risky(&["env", "-i", "-u", "sh", "A=1", "python3", "-c", "c"]),
            [(7, CODE)]
        );
        assert_eq!(risky(&["env", "-S", "bash -c s"]), [(2, CODE)]);
        assert_eq!(risky(&["env", "--split-string=bash -c s"]), [(1, CODE)]);
    }

    #[test]
    fn wrapped_interpreters_are_checked_for_code_only() {
        assert_eq!(
            risky(&["timeout", "60", "bash", "-c", "s", "x"]),
            [(4, CODE)]
        );
        assert_eq!(
            risky(&["docker", "exec", "box", "sh", "-c", "s"]),
            [(5, CODE)]
        );
        assert_eq!(risky(&["apt-get", "install", "python3", "{{ p }}"]), []);
        assert_eq!(risky(&["python3", "{{ script }}"]), [(1, OPT)]);
        assert_eq!(risky(&["train", "--lr", "{{ lr }}"]), []);
    }
}
