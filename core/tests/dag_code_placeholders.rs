//! No shell through params: a placeholder inside code that a shell or
//! interpreter runs (`sh -c SCRIPT`, `python3 -c CODE`, `perl -e CODE`, …)
//! is a validation error at its `line:col` that says how to pass the value
//! instead; placeholders after the code (`$1`, `sys.argv`) and in `env`
//! values are data and stay allowed.
#![allow(clippy::unwrap_used)]

use trainyard_core::dag::{
    DagErrorKind, DagErrors, DagSpec, EnvSource, ParamValue, RenderContext, parse_dag, render_str,
};

/// A one-task DAG whose command is `command` (a TOML array, written as is),
/// with a `name` param; the command sits on line 5.
fn dag(command: &str) -> String {
    format!("id = \"d\"\n[params]\nname = \"world\"\n[tasks.t]\ncommand = {command}\n")
}

fn errors(command: &str) -> DagErrors {
    match parse_dag("d.toml", &dag(command)) {
        Ok(_) => panic!("{command} was accepted"),
        Err(e) => e,
    }
}

fn accepted(src: &str) -> DagSpec {
    match parse_dag("d.toml", src) {
        Ok(spec) => spec,
        Err(e) => panic!("{e}"),
    }
}

/// The 1-based column of the first `{{` on the command's line.
fn col_of_placeholder(command: &str) -> usize {
    format!("command = {command}").find("{{").unwrap() + 1
}

/// The only error is a PlaceholderInCode at line 5, column `col`.
fn assert_code_error(command: &str, col: usize) -> String {
    let err = errors(command);
    assert_eq!(err.errors.len(), 1, "{err}");
    let e = &err.errors[0];
    assert_eq!(e.kind, DagErrorKind::PlaceholderInCode, "{err}");
    assert_eq!((e.line, e.col), (5, col), "{err}");
    err.to_string()
}

#[test]
fn a_placeholder_in_a_shell_script_is_an_error_at_its_position_saying_what_to_do() {
    let cmd = r#"["sh", "-c", "echo hello {{ params.name }}"]"#;
    assert_eq!(col_of_placeholder(cmd), 36);
    let text = assert_code_error(cmd, 36);
    assert_eq!(
        text,
        "d.toml:5:36: error: task `t`: placeholder `{{ params.name }}` is inside the script that `sh -c` runs, \
         so a value such as `x; id` would run as shell code; pass the value through `env` instead: \
         env = { NAME = \"{{ params.name }}\" } and \"$NAME\" in the script, or as an argument after the script, \
         read as \"$1\" (the element right after the script is $0)"
    );
}

#[test]
fn every_shell_is_covered_by_name_path_and_version() {
    for shell in [
        "sh",
        "bash",
        "dash",
        "zsh",
        "ksh",
        "/bin/bash",
        "/usr/bin/zsh",
        "ksh93",
    ] {
        let cmd = format!(r#"["{shell}", "-c", "x {{{{ params.name }}}}"]"#);
        let text = assert_code_error(&cmd, col_of_placeholder(&cmd));
        let program = shell.rsplit('/').next().unwrap();
        assert!(text.contains(&format!("`{program} -c`")), "{text}");
    }
    // Options before -c, clustered -c, `--` and `env` prefixes.
    for cmd in [
        r#"["bash", "-lc", "{{ params.name }}"]"#,
        r#"["bash", "-e", "-o", "pipefail", "-c", "{{ params.name }}"]"#,
        r#"["sh", "-c", "--", "{{ params.name }}"]"#,
        r#"["/usr/bin/env", "bash", "-c", "{{ params.name }}"]"#,
        r#"["env", "-i", "A=1", "sh", "-c", "{{ params.name }}"]"#,
        r#"["env", "-S", "sh -c {{ params.name }}"]"#,
        r#"["timeout", "60", "bash", "-c", "{{ params.name }}"]"#,
    ] {
        let err = errors(cmd);
        assert!(
            err.errors
                .iter()
                .all(|e| e.kind == DagErrorKind::PlaceholderInCode),
            "{cmd}: {err}"
        );
    }
}

#[test]
fn interpreters_code_after_dash_c_or_dash_e_is_refused_in_their_own_words() {
    for (cmd, says) in [
        (
            r#"["python", "-c", "print('{{ params.name }}')"]"#,
            "os.environ[\"NAME\"]",
        ),
        (
            r#"["python3", "-c", "print('{{ params.name }}')"]"#,
            "sys.argv[1]",
        ),
        (
            r#"["python3.11", "-c", "print('{{ params.name }}')"]"#,
            "Python code",
        ),
        (
            r#"["perl", "-e", "print '{{ params.name }}'"]"#,
            "$ENV{NAME}",
        ),
        (r#"["perl", "-E", "say '{{ params.name }}'"]"#, "Perl code"),
        (
            r#"["ruby", "-e", "puts '{{ params.name }}'"]"#,
            "ENV[\"NAME\"]",
        ),
        (
            r#"["node", "-e", "console.log('{{ params.name }}')"]"#,
            "process.env.NAME",
        ),
        (
            r#"["node", "--eval", "x('{{ params.name }}')"]"#,
            "`node --eval`",
        ),
        (r#"["node", "-p", "'{{ params.name }}'"]"#, "JavaScript"),
    ] {
        let err = errors(cmd);
        let text = err.to_string();
        assert_eq!(err.errors.len(), 1, "{cmd}: {err}");
        assert_eq!(err.errors[0].kind, DagErrorKind::PlaceholderInCode, "{cmd}");
        assert!(text.contains(says), "{cmd}: {text}");
    }
}

#[test]
fn built_in_placeholders_point_at_the_variable_every_task_has() {
    let text = errors(r#"["bash", "-c", "echo {{ run_id }} {{ logical_date }}"]"#).to_string();
    assert!(text.contains("every task has TRAINYARD_RUN_ID"), "{text}");
    assert!(
        text.contains("every task has TRAINYARD_LOGICAL_DATE"),
        "{text}"
    );
}

#[test]
fn placeholders_after_the_code_are_data_and_stay_allowed() {
    for cmd in [
        r#"["sh", "-c", "echo \"$1\"", "sh", "{{ params.name }}"]"#,
        r#"["bash", "script.sh", "{{ params.name }}", "{{ run_id }}"]"#,
        r#"["python3", "-c", "import sys; print(sys.argv[1])", "{{ params.name }}"]"#,
        r#"["python3", "train.py", "--name", "{{ params.name }}"]"#,
        r#"["perl", "-e", "print @ARGV", "--", "{{ params.name }}"]"#,
        r#"["node", "-e", "console.log(process.argv[1])", "--", "{{ params.name }}"]"#,
        r#"["echo", "-c", "{{ params.name }}"]"#,
        r#"["apt-get", "install", "python3", "{{ params.name }}"]"#,
    ] {
        accepted(&dag(cmd));
    }
}

#[test]
fn where_perl_still_reads_switches_a_leading_placeholder_needs_a_double_dash() {
    // `perl -e CODE VALUE` with VALUE = `-esystem("id")` would run it.
    let err = errors(r#"["perl", "-e", "print @ARGV", "{{ params.name }}"]"#);
    assert_eq!(err.errors.len(), 1, "{err}");
    assert_eq!(err.errors[0].kind, DagErrorKind::PlaceholderInCode);
    let text = err.to_string();
    assert!(
        text.contains("still reads options") && text.contains("put \"--\""),
        "{text}"
    );
}

#[test]
fn env_values_take_placeholders_and_render_them_as_plain_text() {
    let src = r#"
id = "d"
[params]
name = "world"
[defaults]
env = { RUN = "{{ run_id }}" }
[tasks.t]
command = ["sh", "-c", "echo hello \"$NAME\""]
env = { NAME = "{{ params.name }}", TOKEN = { value = "t-{{ params.name }}", secret = true } }
[tasks.s]
shell = 'echo "$NAME"'
env = { NAME = "{{ params.name }}" }
"#;
    let spec = accepted(src);
    let task = &spec.tasks["t"];
    let EnvSource::Value(name) = &task.env["NAME"].source else {
        panic!("not a value");
    };
    assert_eq!(name, "{{ params.name }}");
    let ctx = RenderContext {
        dag_id: "d".into(),
        run_id: "r1".into(),
        task_id: "t".into(),
        logical_date: chrono::DateTime::UNIX_EPOCH,
        params: [(
            "name".to_owned(),
            ParamValue::String("x; id > /tmp/pwned $(id)".into()),
        )]
        .into_iter()
        .collect(),
    };
    assert_eq!(render_str(name, &ctx).unwrap(), "x; id > /tmp/pwned $(id)");
    let EnvSource::Value(run) = &task.env["RUN"].source else {
        panic!("not a value");
    };
    assert_eq!(render_str(run, &ctx).unwrap(), "r1");
}

#[test]
fn env_placeholders_are_checked_like_command_ones() {
    let src = "id = \"d\"\n[tasks.t]\ncommand = [\"true\"]\nenv = { A = \"{{ params.nope }}\", B = \"{{ bogus }}\" }\n";
    let err = parse_dag("d.toml", src).unwrap_err();
    let kinds: Vec<(DagErrorKind, usize, usize)> =
        err.errors.iter().map(|e| (e.kind, e.line, e.col)).collect();
    assert_eq!(
        kinds,
        [
            (DagErrorKind::UnknownParam, 4, 14),
            (DagErrorKind::BadPlaceholder, 4, 39)
        ],
        "{err}"
    );
}

#[test]
fn shell_tasks_keep_refusing_placeholders_in_the_script() {
    let src = "id = \"d\"\n[params]\nname = \"w\"\n[tasks.t]\nshell = \"echo {{ params.name }}\"\n";
    let err = parse_dag("d.toml", src).unwrap_err();
    assert_eq!(err.errors.len(), 1, "{err}");
    assert_eq!(err.errors[0].kind, DagErrorKind::BadPlaceholder);
    assert!(err.to_string().contains("env = { NAME ="), "{err}");
}

#[test]
fn inherit_env_is_a_setting_with_defaults_and_a_type() {
    let src = "id = \"d\"\n[defaults]\ninherit_env = true\n[tasks.a]\ncommand = [\"true\"]\n[tasks.b]\ncommand = [\"true\"]\ninherit_env = false\n[tasks.c]\ncommand = [\"true\"]\n";
    let spec = accepted(src);
    assert!(spec.tasks["a"].inherit_env);
    assert!(!spec.tasks["b"].inherit_env);
    let plain = accepted("id = \"d\"\n[tasks.c]\ncommand = [\"true\"]\n");
    assert!(!plain.tasks["c"].inherit_env);
    let err = parse_dag(
        "d.toml",
        "id = \"d\"\n[tasks.c]\ncommand = [\"true\"]\ninherit_env = \"yes\"\n",
    )
    .unwrap_err();
    assert_eq!(err.errors[0].kind, DagErrorKind::WrongType, "{err}");
    // Specs stored before the setting existed still decode.
    let mut json = serde_json::to_value(&plain).unwrap();
    json["tasks"]["c"]
        .as_object_mut()
        .unwrap()
        .remove("inherit_env");
    let old: DagSpec = serde_json::from_value(json).unwrap();
    assert!(!old.tasks["c"].inherit_env);
}

#[test]
fn nul_characters_and_oversized_param_defaults_are_refused() {
    let err = parse_dag(
        "d.toml",
        "id = \"d\"\n[params]\nx = \"a\\u0000b\"\n[tasks.t]\ncommand = [\"echo\", \"\\u0000\"]\n",
    )
    .unwrap_err();
    let at: Vec<(usize, usize)> = err.errors.iter().map(|e| (e.line, e.col)).collect();
    assert_eq!(at, [(3, 5), (5, 20)], "{err}");
    assert!(err.to_string().contains("NUL"), "{err}");

    let big = "x".repeat(70 * 1024);
    let err = parse_dag(
        "d.toml",
        &format!("id = \"d\"\n[params]\nx = \"{big}\"\n[tasks.t]\ncommand = [\"true\"]\n"),
    )
    .unwrap_err();
    assert_eq!(err.errors[0].kind, DagErrorKind::BadParam, "{err}");
    assert!(err.to_string().contains("65536 bytes"), "{err}");
}
