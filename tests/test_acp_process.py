from __future__ import annotations

from aegisd.acp import agent_environment


def test_agent_environment_is_filtered() -> None:
    base = {"PATH": "/bin", "HOME": "/h", "ANTHROPIC_API_KEY": "k", "CLAUDE_CODE_X": "1", "LC_ALL": "C",
            "AEGIS_AUTH_TOKEN": "secret", "DATABASE_URL": "postgres://u:p@h/db", "AWS_SECRET_ACCESS_KEY": "a",
            "GITHUB_TOKEN": "g", "IS_SANDBOX": "yes", "MY_TOOL_HOME": "/t", "GOOGLE_KEY": "gk"}
    env = agent_environment(base, extra={"EXTRA": "1", "bad name": "x", "NUL": "a\0b"},
                            pass_env=["MY_TOOL_HOME", "GOOGLE_*"],
                            markers={"AEGIS_SESSION_ID": "s"})
    assert env["PATH"] == "/bin" and env["HOME"] == "/h" and env["ANTHROPIC_API_KEY"] == "k"
    assert env["CLAUDE_CODE_X"] == "1" and env["LC_ALL"] == "C"
    for secret in ("AEGIS_AUTH_TOKEN", "DATABASE_URL", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN"):
        assert secret not in env
    assert "IS_SANDBOX" not in env  # only exactly "1" is passed (claude-agent-acp refuses other values as root)
    assert env["MY_TOOL_HOME"] == "/t" and env["GOOGLE_KEY"] == "gk"
    assert env["EXTRA"] == "1" and "bad name" not in env and "NUL" not in env
    assert env["AEGIS_SESSION_ID"] == "s"
    assert agent_environment({"IS_SANDBOX": "1"}, markers={})["IS_SANDBOX"] == "1"
