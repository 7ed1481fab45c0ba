"""The test world's mail provider: Postfix (MSA and MTA), Dovecot (IMAP, LMTP), gpg-wks-server
and a Key Storage Service, all on the world address W, started and stopped like Tor and nginx.

Why: refreshd's mail channel meets a real submission server (STARTTLS, SASL through Dovecot,
`smtpd_sasl_authenticated_header = yes` so the "(Authenticated sender: ...)" line the Key
Publication Protocol relies on is there), a real IMAP server, the real gpg-wks-server and a
KST honest to 001_ef4959fe9811f7b2.txt (tests/world/kst.py). Verified facts about running these
privately are in NOTES-mail.md; the traps they describe are handled here (config dir outside
/etc, T traversable and short for AF_UNIX paths, users file group dovecot, no anvil penalty,
Postfix stopped before Dovecot, config files backdated so `postfix start` does not re-read them).

Layout: one provider serving the domains example.org and example.net. Doors on W: `submission`
(STARTTLS required, SASL required), `mx` (the port-25 door: no authentication, only local
domains), `imaps`. keys@<domain> goes to the KST, key-submission@example.org to gpg-wks-server;
everything else is delivered to Dovecot over LMTP, and nothing leaves (default transport error).
gpg-wks-server publishes straight into the WKD server's tree for example.org.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import imaplib
import json
import os
import re
import shutil
import signal
import smtplib
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.world import names, procs
from tests.world.ca import LocalCA
from tests.world.nginx import WkdServer, wkd_path

START_TIMEOUT = 20.0
DOMAINS = ("example.org", "example.net")
WKS_DOMAIN = "example.org"
SUBMISSION_ADDRESS = f"key-submission@{WKS_DOMAIN}"
NEW_KEY = ("future-default", "default", "never")  # gpg --quick-gen-key: algorithm, usage, expiry
NOBODY = ("nobody", "nogroup")


class MailStartError(RuntimeError):
    """Postfix or Dovecot did not come up; the message carries their log tails."""


@dataclass(frozen=True)
class Listed:
    """One message of an IMAP listing: what a comparison before/after must find unchanged."""

    uid: int
    flags: tuple[str, ...]
    sha256: str
    message_id: str


class MailServers(procs.Service):
    """The provider; a context manager. `users` maps address -> password."""

    def __init__(
        self,
        ca: LocalCA,
        address: str,
        users: dict[str, str],
        *,
        wkd: WkdServer | None = None,
    ) -> None:
        self.ca = ca
        self.address = address
        self.users = dict(users)
        self.wkd = wkd
        self.root = Path()
        self.submission_port = 0
        self.mx_port = 0
        self.imaps_port = 0
        self.submission_key = b""
        self._dovecot: procs.Proc | None = None
        self._postfix_started = False

    # -- lifecycle --------------------------------------------------------------------------

    def _start(self) -> None:
        # Short and traversable: Dovecot's socket paths must fit in 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="rdm-", dir="/tmp"))
        self.root.chmod(0o755)
        for sub in ("conf", "tls", "log", "bin", "data", "spool", "mail", "kst", "wks"):
            (self.root / sub).mkdir()
        shutil.chown(self.root / "data", "postfix")
        shutil.chown(self.root / "mail", *NOBODY)
        cert = self.ca.issue([names.MAIL_HOST, self.address, "127.0.0.1"])
        shutil.copy(cert.cert_chain, self.root / "tls" / "cert.pem")
        shutil.copy(cert.key, self.root / "tls" / "key.pem")
        self.submission_port = procs.free_port(self.address)
        self.mx_port = procs.free_port(self.address)
        self.imaps_port = procs.free_port(self.address)
        here = Path(__file__).parent
        for program in ("kst.py", "wkspipe.py"):
            shutil.copy(here / program, self.root / "bin" / program)
        self._write_kst()
        self._write_wks()
        self._write_postfix()
        self._write_dovecot()
        for path in (self.root / "conf").iterdir():  # see the module doc
            past = time.time() - 120
            os.utime(path, (past, past))
        done = subprocess.run(
            ["postfix", "-c", str(self.root / "conf"), "start"], capture_output=True, timeout=60
        )
        if done.returncode != 0:
            raise MailStartError(
                "postfix start failed: "
                + (done.stdout + done.stderr).decode()[-2000:]
                + self.log_tails()
            )
        self._postfix_started = True
        self._dovecot = procs.start(
            "dovecot",
            ["dovecot", "-F", "-c", str(self.root / "conf" / "dovecot.conf")],
            self.root / "log" / "dovecot.out",
        )
        ports = (self.submission_port, self.mx_port, self.imaps_port)
        if not procs.wait_for(lambda: all(self._listening(p) for p in ports), START_TIMEOUT):
            raise MailStartError("mail doors did not open\n" + self.log_tails())

    def stop(self) -> None:
        """Postfix first (an idle smtpd holds Dovecot's auth socket), then Dovecot, then the
        gpg-agent gpg-wks-server started."""
        if self._postfix_started:
            subprocess.run(
                ["postfix", "-c", str(self.root / "conf"), "stop"], capture_output=True, timeout=60
            )
            self._postfix_started = False
            self._wait_postfix_gone()
        if self._dovecot is not None:
            procs.stop(self._dovecot)
            self._dovecot = None
        if self.root != Path():
            home = self.root / "wks" / "gnupg"
            if home.exists():
                subprocess.run(
                    ["gpgconf", "--homedir", str(home), "--kill", "all"],
                    capture_output=True,
                    timeout=30,
                    check=False,
                )
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = Path()

    def _wait_postfix_gone(self) -> None:
        pid_file = self.root / "spool" / "pid" / "master.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().split()[0])
            if not procs.wait_for(lambda: not _alive(pid), 10):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _listening(self, port: int) -> bool:
        import socket

        with socket.socket() as sock:
            sock.settimeout(1)
            return sock.connect_ex((self.address, port)) == 0

    def log_tails(self, lines: int = 40) -> str:
        out = []
        for name in ("postfix.log", "dovecot.log", "dovecot.out"):
            path = self.root / "log" / name
            with contextlib.suppress(OSError):
                out.append(f"== {name}\n" + "\n".join(path.read_text().splitlines()[-lines:]))
        return "\n".join(out)

    # -- configuration ----------------------------------------------------------------------

    def _write_postfix(self) -> None:
        t = self.root
        local = [*self.users, *(f"keys@{d}" for d in DOMAINS), SUBMISSION_ADDRESS]
        (t / "conf" / "vmailbox").write_text("".join(f"{a} x\n" for a in local))
        transport = [f"keys@{d} keyspipe:\n" for d in DOMAINS] + [
            f"{SUBMISSION_ADDRESS} wkspipe:\n"
        ]
        (t / "conf" / "transport").write_text("".join(transport))
        main = {
            "compatibility_level": "3.6",
            "queue_directory": f"{t}/spool",
            "data_directory": f"{t}/data",
            "meta_directory": "/etc/postfix",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "inet_interfaces": "127.0.0.1",  # W is not an interface address; master.cf binds it
            "proxy_interfaces": self.address,
            "inet_protocols": "ipv4",
            "myhostname": names.MAIL_HOST,
            "mydomain": WKS_DOMAIN,
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "default_transport": "error:nothing leaves the test world",
            "relay_transport": "error:nothing leaves the test world",
            "virtual_mailbox_domains": ", ".join(DOMAINS),
            "virtual_mailbox_maps": f"texthash:{t}/conf/vmailbox",
            "virtual_transport": "lmtp:unix:private/dovecot-lmtp",
            "transport_maps": f"texthash:{t}/conf/transport",
            "keyspipe_destination_recipient_limit": "1",
            "wkspipe_destination_recipient_limit": "1",
            "smtpd_tls_chain_files": f"{t}/tls/key.pem, {t}/tls/cert.pem",
            "smtpd_sasl_type": "dovecot",
            "smtpd_sasl_path": "private/auth",
            "smtpd_sasl_authenticated_header": "yes",
            "smtpd_helo_required": "no",
            "maillog_file": f"{t}/log/postfix.log",
            "maillog_file_prefixes": str(t),
            "biff": "no",
            "message_size_limit": str(20 << 20),
        }
        (t / "conf" / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
        a = self.address
        services = [
            f"{a}:{self.submission_port} inet n - n - - smtpd",
            "  -o syslog_name=postfix/submission",
            "  -o smtpd_tls_security_level=encrypt",
            "  -o smtpd_sasl_auth_enable=yes",
            "  -o smtpd_tls_auth_only=yes",
            "  -o smtpd_client_restrictions=permit_sasl_authenticated,reject",
            "  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject",
            f"{a}:{self.mx_port} inet n - n - - smtpd",
            "  -o smtpd_tls_security_level=may",
            "  -o smtpd_relay_restrictions=reject_unauth_destination",
            "pickup unix n - n 60 1 pickup",
            "cleanup unix n - n - 0 cleanup",
            "qmgr unix n - n 300 1 qmgr",
            "tlsmgr unix - - n 1000? 1 tlsmgr",
            "rewrite unix - - n - - trivial-rewrite",
            "bounce unix - - n - 0 bounce",
            "defer unix - - n - 0 bounce",
            "trace unix - - n - 0 bounce",
            "verify unix - - n - 1 verify",
            "flush unix n - n 1000? 0 flush",
            "proxymap unix - - n - - proxymap",
            "smtp unix - - n - - smtp",
            "relay unix - - n - - smtp",
            "showq unix n - n - - showq",
            "error unix - - n - - error",
            "retry unix - - n - - error",
            "discard unix - - n - - discard",
            "lmtp unix - - n - - lmtp",
            "anvil unix - - n - 1 anvil",
            "scache unix - - n - 1 scache",
            "postlog unix-dgram n - n - 1 postlogd",
            "keyspipe unix - n n - - pipe flags=Rq user=nobody:nogroup"
            f" argv=/usr/bin/python3 {t}/bin/kst.py {t}/kst ${{sender}} ${{recipient}}",
            "wkspipe unix - n n - - pipe flags=Rq user=nobody:nogroup"
            f" argv=/usr/bin/python3 {t}/bin/wkspipe.py {t}/wks",
        ]
        (t / "conf" / "master.cf").write_text("\n".join(services) + "\n")

    def _write_dovecot(self) -> None:
        t = self.root
        users = t / "conf" / "users"
        lines = []
        for address, password in self.users.items():
            hashed = subprocess.run(
                ["doveadm", "pw", "-s", "SHA512-CRYPT", "-p", password],
                check=True,
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
            lines.append(f"{address}:{hashed}::::::\n")
        users.write_text("".join(lines))
        shutil.chown(users, group="dovecot")
        users.chmod(0o640)
        instance = "refreshd-" + t.name
        conf = f"""
base_dir = {t}/dovecot
state_dir = {t}/dovecot-state
instance_name = {instance}
log_path = {t}/log/dovecot.log
protocols = imap lmtp
listen = {self.address}
hostname = {names.MAIL_HOST}
ssl = required
ssl_cert = <{t}/tls/cert.pem
ssl_key = <{t}/tls/key.pem
disable_plaintext_auth = yes
auth_mechanisms = plain login
auth_failure_delay = 0
mail_location = maildir:~/Maildir
mail_uid = nobody
mail_gid = nogroup
passdb {{
  driver = passwd-file
  args = scheme=SHA512-CRYPT username_format=%u {users}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {users}
  default_fields = home={t}/mail/%d/%n
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {self.imaps_port}
    ssl = yes
  }}
}}
service lmtp {{
  unix_listener {t}/spool/private/dovecot-lmtp {{
    mode = 0600
    user = postfix
    group = postfix
  }}
}}
service auth {{
  unix_listener {t}/spool/private/auth {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""
        (t / "conf" / "dovecot.conf").write_text(conf)

    def _write_kst(self) -> None:
        state = self.root / "kst"
        (state / "keys").mkdir()
        (state / "config.json").write_text(json.dumps({"mx": [self.address, self.mx_port]}))
        _chown_tree(state)

    def _write_wks(self) -> None:
        """gpg-wks-server's GNUPGHOME with the submission key and its --directory; the
        domain's hu/ is the WKD server's own directory, so what it publishes is served."""
        state = self.root / "wks"
        home = state / "gnupg"
        home.mkdir(mode=0o700)
        top = state / "top"
        domain = top / WKS_DOMAIN
        (domain / "pending").mkdir(parents=True)
        (domain / "submission-address").write_text(SUBMISSION_ADDRESS + "\n")
        (domain / "policy").write_text("")
        gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback"]
        subprocess.run(
            [*gpg, "--passphrase", "", "--quick-gen-key", SUBMISSION_ADDRESS, *NEW_KEY],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.submission_key = subprocess.run(
            [*gpg, "--export", SUBMISSION_ADDRESS], check=True, capture_output=True, timeout=60
        ).stdout
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
        if self.wkd is not None:
            host, path = wkd_path(SUBMISSION_ADDRESS, "advanced")
            self.wkd.publish_wkd(SUBMISSION_ADDRESS, self.submission_key, methods=("advanced",))
            base = path.rsplit("/hu/", 1)[0]
            self.wkd.put_file(host, base + "/submission-address", SUBMISSION_ADDRESS.encode())
            hu = self.wkd.www / host / base.lstrip("/") / "hu"
            shutil.chown(hu, *NOBODY)
            hu.chmod(0o755)
            for parent in hu.parents:  # gpg-wks-server runs as nobody: let it reach hu/
                if parent == Path("/tmp") or parent == Path("/"):
                    break
                parent.chmod(parent.stat().st_mode | 0o001)
            (domain / "hu").symlink_to(hu)
        else:
            (domain / "hu").mkdir()
        (state / "config.json").write_text(
            json.dumps(
                {"mx": [self.address, self.mx_port], "top": str(top), "gnupghome": str(home)}
            )
        )
        _chown_tree(state)
        for directory in (top, domain):
            directory.chmod(0o750)  # gpg-wks-server refuses a world-readable directory

    # -- what tests do with it --------------------------------------------------------------

    def client_context(self) -> ssl.SSLContext:
        return self.ca.client_context()

    def submit(self, user: str, mail: bytes, to: list[str]) -> None:
        """Send `mail` as an authenticated user (the MSA door)."""
        with smtplib.SMTP(self.address, self.submission_port, timeout=30) as smtp:
            smtp.starttls(context=self.client_context())
            smtp.ehlo()
            smtp.user, smtp.password = user, self.users[user]
            smtp.auth("PLAIN", smtp.auth_plain)
            smtp.sendmail(user, to, mail)

    def inject(self, sender: str, to: list[str], mail: bytes) -> None:
        """Send `mail` through the MX door, as any stranger on the internet can."""
        with smtplib.SMTP(self.address, self.mx_port, timeout=30) as smtp:
            smtp.sendmail(sender, to, mail)

    @contextlib.contextmanager
    def imap(
        self, user: str, mailbox: str = "INBOX", *, readonly: bool = False
    ) -> Iterator[imaplib.IMAP4_SSL]:
        client = imaplib.IMAP4_SSL(self.address, self.imaps_port, ssl_context=self.client_context())
        try:
            client.login(user, self.users[user])
            client.select(mailbox, readonly=readonly)
            yield client
        finally:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                client.logout()

    def listing(self, user: str, mailbox: str = "INBOX") -> list[Listed]:
        """Every message with its UID, flags and a hash of its bytes (read with PEEK)."""
        with self.imap(user, mailbox, readonly=True) as client:
            _typ, data = client.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
        listed = []
        for item in data:
            if not isinstance(item, tuple):
                continue
            head = item[0].decode()
            uid = int(re.search(r"UID (\d+)", head).group(1))  # type: ignore[union-attr]
            flag_text = re.search(r"FLAGS \(([^)]*)\)", head).group(1)  # type: ignore[union-attr]
            flags = tuple(sorted(set(flag_text.split()) - {"\\Recent"}))
            body = item[1]
            mid = email.message_from_bytes(body).get("Message-ID", "")
            listed.append(Listed(uid, flags, hashlib.sha256(body).hexdigest(), mid.strip()))
        return sorted(listed, key=lambda m: m.uid)

    def wait_messages(self, user: str, count: int, timeout: float = 60.0) -> list[Listed]:
        """Poll until the mailbox holds at least `count` messages."""
        found: list[Listed] = []

        def enough() -> bool:
            nonlocal found
            found = self.listing(user)
            return len(found) >= count

        procs.wait_for(enough, timeout, interval=0.5)
        return found

    def kst_log(self) -> list[dict[str, object]]:
        path = self.root / "kst" / "log.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def wks_log(self) -> list[dict[str, object]]:
        path = self.root / "wks" / "log.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def kst_store(self, address: str, armored: str) -> None:
        """Put a key into the KST's storage, as the provider would after a publication."""
        path = self.root / "kst" / "keys" / address
        path.write_text(armored.strip())
        shutil.chown(path, *NOBODY)

    def kst_key(self, address: str) -> str | None:
        path = self.root / "kst" / "keys" / address
        return path.read_text() if path.exists() else None

    def kst_faults(self, **faults: str) -> None:
        """Make the KST misbehave (see kst.py); no arguments: behave again."""
        path = self.root / "kst" / "faults.json"
        path.write_text(json.dumps(faults))
        shutil.chown(path, *NOBODY)

    def mail_from(self, sender: str, to: str, body: str, **headers: str) -> bytes:
        """A plain text mail (tests build answers and look-alikes with this)."""
        head = {
            "From": sender,
            "To": to,
            "Date": email.utils.formatdate(),
            "Message-ID": email.utils.make_msgid(domain="example.net"),
            **{k.replace("_", "-"): v for k, v in headers.items()},
        }
        text = "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n" + body
        return text.encode()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _chown_tree(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        shutil.chown(path, *NOBODY)
