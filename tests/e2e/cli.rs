//! Global CLI behaviour: help, version, usage errors.

use hephaestus_tests::TestEnv;

#[test]
fn version_and_help_work() {
    let env = TestEnv::empty("nothing");
    let run = env.run(["--version"]);
    run.expect_code(0);
    assert!(run.stdout.starts_with("heph "), "{}", run.stdout);
    env.run(["--help"]).expect_code(0);
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let env = TestEnv::empty("nothing");
    let run = env.run(["frobnicate"]);
    run.expect_code(2);
}

/// Runs `shell -c script` with the completion script of `heph` in `file`; stdout.
fn shell_stdout(shell: &str, script: &str) -> Option<String> {
    let out = std::process::Command::new(shell)
        .arg("-c")
        .arg(script)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "{shell} failed on its completion script: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn completions_are_loaded_by_each_shell_and_complete_subcommands() {
    let env = TestEnv::empty("completions");
    for shell in ["bash", "zsh", "fish"] {
        let run = env.run(["completions", shell]);
        run.expect_code(0);
        assert!(
            run.stdout.contains("self-modify"),
            "{shell}: {}",
            run.stdout
        );
        env.write(format!("heph.{shell}"), &run.stdout);
    }
    let file = |shell: &str| env.path(format!("heph.{shell}")).display().to_string();
    // bash: the function completes a prefix of a subcommand and of a flag.
    let bash = shell_stdout(
        "bash",
        &format!(
            "source '{}'; COMP_WORDS=(heph self-); COMP_CWORD=1; _heph heph self- heph; \
             echo \"${{COMPREPLY[@]}}\"; COMP_WORDS=(heph history --li); COMP_CWORD=2; \
             _heph heph --li history; echo \"${{COMPREPLY[@]}}\"",
            file("bash")
        ),
    )
    .expect("bash runs");
    let mut lines = bash.lines();
    assert_eq!(lines.next(), Some("self-modify"), "{bash}");
    assert!(
        lines.next().is_some_and(|l| l.contains("--limit")),
        "{bash}"
    );
    // zsh and fish (installed by .ci/run): the scripts parse; fish completes from it.
    if let Some(out) = shell_stdout("zsh", &format!("zsh -n '{}' && echo parsed", file("zsh"))) {
        assert_eq!(out.trim(), "parsed");
    }
    if let Some(out) = shell_stdout(
        "fish",
        &format!("source '{}'; complete -C 'heph self-m'", file("fish")),
    ) {
        assert!(out.starts_with("self-modify"), "{out}");
    }
}

#[test]
fn the_man_page_renders_and_one_page_per_command_is_written() {
    let env = TestEnv::empty("man");
    let run = env.run(["man"]);
    run.expect_code(0);
    assert!(
        run.stdout.starts_with(".ie "),
        "roff: {}",
        &run.stdout[..80]
    );
    env.write("heph.1", &run.stdout);
    let man = std::process::Command::new("man")
        .args(["-l", "heph.1"])
        .env("MANWIDTH", "80")
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .current_dir(env.project())
        .output()
        .expect("man -l (Debian's man-db)");
    let text = String::from_utf8_lossy(&man.stdout);
    assert!(
        man.status.success(),
        "{}",
        String::from_utf8_lossy(&man.stderr)
    );
    assert!(
        text.contains("Evolve a running Rust project safely"),
        "{text}"
    );
    assert!(text.contains("self-modify"), "{text}");
    let dir = env.path("man1");
    env.run(["man", "--out-dir", dir.to_str().expect("utf8")])
        .expect_code(0);
    for page in ["heph.1", "heph-self-modify.1", "heph-watch.1", "heph-man.1"] {
        assert!(dir.join(page).is_file(), "{page} missing");
    }
    assert!(
        env.read("man1/heph-self-modify.1")
            .contains("\\-\\-dry\\-run"),
        "the page of a command lists its flags"
    );
}

/// stderr of `heph ARGS` run on a pseudo-terminal (util-linux `script`), so that
/// `--color auto` sees a terminal; NO_COLOR as given (None: unset).
fn on_terminal(env: &TestEnv, args: &str, no_color: Option<&str>) -> String {
    on_terminal_with(env, args, no_color, &[])
}

/// [`on_terminal`] with more environment variables.
fn on_terminal_with(
    env: &TestEnv,
    args: &str,
    no_color: Option<&str>,
    vars: &[(&str, &str)],
) -> String {
    let mut cmd = env.heph();
    cmd.envs(vars.iter().copied());
    cmd.env_remove("NO_COLOR").env("TERM", "xterm");
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let heph = hephaestus_tests::heph_bin().display().to_string();
    let program = cmd.get_program().to_owned();
    assert_eq!(program.to_string_lossy(), heph);
    let out = std::process::Command::new("script")
        .args(["-qec", &format!("'{heph}' {args}"), "/dev/null"])
        .env_clear()
        .envs(
            cmd.get_envs()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
        )
        .current_dir(env.project())
        .output()
        .expect("script (util-linux)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn colors_follow_the_flag_and_a_non_empty_no_color() {
    let env = TestEnv::empty("colors");
    let esc = "\u{1b}[";
    // On a terminal: colors unless NO_COLOR is set to something; an empty one counts as unset.
    assert!(on_terminal(&env, "frobnicate", None).contains(esc));
    assert!(on_terminal(&env, "frobnicate", Some("")).contains(esc));
    assert!(!on_terminal(&env, "frobnicate", Some("1")).contains(esc));
    // `--color never` reaches clap's own usage errors, and heph's errors.
    assert!(!on_terminal(&env, "--color never frobnicate", None).contains(esc));
    assert!(!on_terminal(&env, "--color never show abc", None).contains(esc));
    assert!(on_terminal(&env, "show abc", None).contains(esc));
    // The same rule for heph's own messages (clap has its own reading of NO_COLOR).
    assert!(on_terminal(&env, "show abc", Some("")).contains(esc));
    assert!(!on_terminal(&env, "show abc", Some("1")).contains(esc));
    // `--color always` wins over NO_COLOR, and works without a terminal.
    let run = env.run(["--color", "always", "frobnicate"]);
    run.expect_code(2);
    assert!(run.stderr.contains(esc), "{}", run.stderr);
    let run = env.run(["--color=always", "show", "abc"]);
    assert!(run.stderr.contains(esc), "{}", run.stderr);
    let run = env.run(["frobnicate"]);
    assert!(!run.stderr.contains(esc), "{}", run.stderr);
}

#[test]
fn durations_may_combine_units() {
    let env = TestEnv::empty("durations");
    // Accepted by the parser: the run goes on to find no cargo project (exit 3).
    let run = env.run(["evolve", "--fitness", "true", "--lock-timeout", "1m30s"]);
    run.expect_code(3);
    let run = env.run(["evolve", "--fitness", "true", "--lock-timeout", "30s1m"]);
    run.expect_code(2);
    assert!(run.stderr.contains("largest first"), "{}", run.stderr);
}

#[test]
fn show_and_history_page_on_a_terminal_and_show_colors_its_diff() {
    let env = TestEnv::new("agent-lib");
    env.run(["snapshot"]).expect_code(0);
    env.write(
        "src/lib.rs",
        format!("{}\n// one more line\n", env.read("src/lib.rs")),
    );
    let id = env.run(["--json", "snapshot"]).json()["evolution"]["short_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let pager = [("PAGER", "sed 's/^/paged: /'")];
    let shown = on_terminal_with(&env, &format!("show {id}"), None, &pager);
    assert!(shown.contains("paged: evolution "), "{shown}");
    assert!(
        shown.contains("paged: \u{1b}[32m+// one more line"),
        "an added line is green: {shown}"
    );
    let listed = on_terminal_with(&env, "history", None, &pager);
    assert!(listed.contains("paged: ID "), "{listed}");
    // --no-pager, NO_COLOR, or no terminal: plain text straight to stdout.
    let plain = on_terminal_with(&env, &format!("--no-pager show {id}"), Some("1"), &pager);
    assert!(!plain.contains("paged:"), "{plain}");
    assert!(!plain.contains('\u{1b}'), "{plain}");
    assert!(plain.contains("+// one more line"), "{plain}");
    let run = env
        .heph()
        .args(["show", &id])
        .env("PAGER", "false")
        .output()
        .expect("heph");
    assert!(String::from_utf8_lossy(&run.stdout).contains("+// one more line"));
}
