"""The provider's Web Key Service: gpg-wks-server behind a Postfix pipe transport.

Why: gpg-wks-server --send hands its answers to /usr/sbin/sendmail, which would read the
system's Postfix configuration; so this wrapper (run by pipe(8) as `nobody`, system Python,
stdlib only) lets it write the answer to a file and submits that to the provider's own MX door.
`wkspipe.py STATE_DIR`, the mail on stdin; STATE_DIR holds config.json ({"mx": [host, port],
"top": DIR, "gnupghome": DIR}) and log.jsonl (one line per mail: gpg-wks-server's exit status
and stderr).
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import json
import os
import smtplib
import subprocess
import sys
import tempfile
from pathlib import Path


def main(argv: list[str]) -> int:
    state = Path(argv[1])
    config = json.loads((state / "config.json").read_text())
    mail = sys.stdin.buffer.read(1 << 20)
    with tempfile.TemporaryDirectory(dir=state) as tmp:
        out = Path(tmp) / "answer"
        done = subprocess.run(
            ["gpg-wks-server", "-C", config["top"], "--receive", "-o", str(out)],
            input=mail,
            capture_output=True,
            env={**os.environ, "GNUPGHOME": config["gnupghome"]},
            timeout=120,
        )
        answer = out.read_bytes() if out.exists() else b""
    with (state / "log.jsonl").open("a") as log:
        log.write(
            json.dumps({"status": done.returncode, "stderr": done.stderr.decode()[-2000:]}) + "\n"
        )
    if answer:
        message = email.message_from_bytes(answer, policy=email.policy.compat32)
        sender = email.utils.parseaddr(message.get("From", ""))[1]
        to = [a for _name, a in email.utils.getaddresses(message.get_all("To", [])) if a]
        host, port = config["mx"]
        with smtplib.SMTP(host, port, timeout=30) as smtp:
            smtp.sendmail(sender, to, answer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
