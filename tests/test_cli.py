"""The command line as an operator drives it: init, inject, held, approve, reject, export."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PG_URL, make_mail

RUN = [sys.executable, "-m", "listserver.cli"]


def run(tmp_path: Path, *args: str, stdin: bytes | None = None, ok: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os
    result = subprocess.run([*RUN, *args], cwd=tmp_path, input=stdin.decode() if stdin else
                            None, capture_output=True, text=True,
                            env={**os.environ, **(env or {})})
    if ok:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def workdir(tmp_path: Path, database_url: str) -> Path:
    run(tmp_path, "init")
    config = tmp_path / "config.toml"
    text = config.read_text(encoding="utf-8")
    assert 'name = "blog"' in text
    if PG_URL:  # point the generated config at this test's PostgreSQL schema
        text = text.replace('url = "sqlite:///var/listserver.sqlite3"', f'url = "{database_url}"')
        config.write_text(text, encoding="utf-8")
        run(tmp_path, "init")
    return tmp_path


def test_init_writes_a_working_config_and_database(workdir: Path) -> None:
    assert (workdir / "config.toml").exists()
    if not PG_URL:
        assert (workdir / "var" / "listserver.sqlite3").exists()
    assert (workdir / "var" / "secret").stat().st_mode & 0o077 == 0
    status = json.loads(run(workdir, "status", "--json").stdout)
    assert status["messages"] == {} and status["ok"] is True


def test_inject_hold_approve_reject_export(workdir: Path) -> None:
    post = make_mail("Første innlegg", "Hei!", sender="Ivar <ivar@example.no>")
    out = run(workdir, "inject", "blog", "-", "--to",
              "blog@lists.example.org", stdin=post.as_bytes()).stdout
    assert "held" in out
    held = json.loads(run(workdir, "held", "blog", "--json").stdout)
    assert [h["subject"] for h in held] == ["Første innlegg"]
    assert run(workdir, "approve", str(held[0]["id"])).stdout.strip().endswith("post")
    other = make_mail("Spam", "Kjøp nå", sender="spam@example.net")
    path = workdir / "spam.eml"
    path.write_bytes(other.as_bytes())
    run(workdir, "inject", "blog", str(path))
    [spam] = json.loads(run(workdir, "held", "blog", "--json").stdout)
    run(workdir, "reject", str(spam["id"]), "--reason", "spam")
    assert json.loads(run(workdir, "held", "blog", "--json").stdout) == []
    reply = make_mail("Re: Første innlegg", "Kommentar", sender="Kari <kari@example.net>",
                      in_reply_to=post["Message-ID"])
    assert "comment" in run(workdir, "inject", "blog", "-", stdin=reply.as_bytes()).stdout
    data = json.loads(run(workdir, "export", "blog").stdout)
    assert data["posts"][0]["title"] == "Første innlegg"
    assert data["posts"][0]["comments"][0]["author"]["name"] == "Kari"
    mbox = run(workdir, "export", "blog", "--format", "mbox").stdout
    assert mbox.startswith("From ") and mbox.count("\nFrom ") == 1


def test_errors_are_one_line_with_exit_codes(workdir: Path) -> None:
    bad = run(workdir, "held", "nosuchlist", ok=False)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert "nosuchlist" in bad.stderr
    usage = run(workdir, "approve", "notanumber", ok=False)
    assert usage.returncode == 2 and usage.stderr.count("\n") == 1
    missing = run(workdir, "--config", "nope.toml", "held", "blog", ok=False)
    assert missing.returncode == 2 and "not found" in missing.stderr
    not_held = run(workdir, "approve", "12345", ok=False)
    assert not_held.returncode == 1 and "no message with id 12345" in not_held.stderr


def test_parked_message_is_retried(workdir: Path) -> None:
    """A list removed from the config while mail for it waits: parked, then retried."""
    config = workdir / "config.toml"
    original = config.read_text(encoding="utf-8")
    reply = make_mail("Re: x", "Hei", sender="kari@example.net", in_reply_to="<x@y>")
    # Store a message for a second list, then take that list away and process.
    config.write_text(original + '\n[[list]]\nname = "old"\n', encoding="utf-8")
    from listserver.app import App
    from listserver.config import load_config
    from listserver.intake import Incoming, store_incoming
    app = App(load_config(config))
    app.db.call(store_incoming, [Incoming("old", reply.as_bytes(), "kari@example.net", ["old@x"],
                                         "inject")],
                app.config.domain)
    app.close()
    config.write_text(original, encoding="utf-8")
    status = run(workdir, "status", "--json", ok=False)
    run(workdir, "retry")   # processes the queue: the list is gone, so it is parked
    status = json.loads(run(workdir, "status", "--json", ok=False).stdout)
    assert status["messages"] == {"failed": 1} and status["ok"] is False
    config.write_text(original + '\n[[list]]\nname = "old"\n', encoding="utf-8")
    assert "1 parked message(s) queued again" in run(workdir, "retry").stdout
    status = json.loads(run(workdir, "status", "--json").stdout)
    assert status["messages"] == {"held": 1}


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed")
def test_real_client_swaks_tree(tmp_path: Path, server) -> None:  # type: ignore[no-untyped-def]
    """A post and a reply sent by swaks, a real SMTP client, come out of export."""
    from conftest import POST_SECRET

    def swaks(to: str, sender: str, subject: str, body: str, *headers: str) -> None:
        args = ["swaks", "--server", f"127.0.0.1:{server.smtp_port}", "--to", to,
                "--from", sender, "--header", f"Subject: {subject}", "--body", body,
                "--silent", "2"]
        for h in headers:
            args += ["--header", h]
        subprocess.run(args, check=True, capture_output=True, timeout=60)

    swaks(f"blog+post-{POST_SECRET}@lists.example.org", "ivar@example.no", "Fra swaks",
          "Et innlegg.", "Message-Id: <swaks-post@example.no>")
    swaks("blog@lists.example.org", "kari@example.net", "Re: Fra swaks", "Svar.",
          "Message-Id: <swaks-reply@example.net>", "In-Reply-To: <swaks-post@example.no>")
    server.idle()
    [post] = server.export()["posts"]
    assert post["message_id"] == "<swaks-post@example.no>"
    assert [c["message_id"] for c in post["comments"]] == ["<swaks-reply@example.net>"]
