"""A real OpenLDAP ``slapd`` for the directory sign-in tests (Debian packages slapd, ldap-utils).

``start_slapd`` writes a minimal ``slapd.conf`` (mdb database, the standard schemas) into a
temporary directory, starts slapd in the foreground on a free loopback port and loads a small
directory with ``ldapadd``: people, a bind account for the engine, and groupOfNames groups.
The people are invented; the passwords are test values.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SLAPD = "/usr/sbin/slapd"
SUFFIX = "dc=example,dc=org"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PW = "root-Secret-9"
BIND_DN = f"cn=pacs-reader,ou=services,{SUFFIX}"
BIND_PW = "reader-Secret-7"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
RADIOLOGISTS = f"cn=radiologists,{GROUPS}"
TECHNOLOGISTS = f"cn=technologists,{GROUPS}"
UNMAPPED = f"cn=cafeteria,{GROUPS}"
PASSWORD = "Dir-Pass-For-Tests-3"

CONF = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {dir}/slapd.pid
database mdb
suffix "{suffix}"
rootdn "{root_dn}"
rootpw {root_pw}
directory {dir}/db
maxsize 10485760
"""


def _person(uid: str, given: str, sn: str) -> str:
    return f"""dn: uid={uid},{PEOPLE}
objectClass: inetOrgPerson
uid: {uid}
cn: {given} {sn}
givenName: {given}
sn: {sn}
mail: {uid}@example.org
userPassword: {PASSWORD}
"""


def _group(dn: str, members: list[str]) -> str:
    cn = dn.split(",")[0].split("=")[1]
    lines = [f"dn: {dn}", "objectClass: groupOfNames", f"cn: {cn}"]
    lines += [f"member: uid={m},{PEOPLE}" for m in members]
    return "\n".join(lines) + "\n"


LDIF = "\n".join([
    f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example Hospital\n",
    f"dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n",
    f"dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n",
    f"dn: ou=services,{SUFFIX}\nobjectClass: organizationalUnit\nou: services\n",
    f"dn: {BIND_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: pacs-reader\n"
    f"userPassword: {BIND_PW}\n",
    _person("drad", "Dana", "Radiology"),
    _person("ttech", "Toni", "Technique"),
    _person("nogroup", "Nico", "Nogroup"),
    _group(RADIOLOGISTS, ["drad"]),
    _group(TECHNOLOGISTS, ["ttech"]),
    _group(UNMAPPED, ["nogroup", "drad"]),
])


@dataclass
class Directory:
    uri: str
    process: subprocess.Popen

    def settings(self) -> dict:
        """The engine's LDAP_* settings for this directory."""
        return {
            "LDAP_SERVER_URI": self.uri,
            "LDAP_BIND_DN": BIND_DN,
            "LDAP_BIND_PASSWORD": BIND_PW,
            "LDAP_USER_SEARCH_BASE": PEOPLE,
            "LDAP_USER_SEARCH_FILTER": "(uid=%(user)s)",
            "LDAP_GROUP_SEARCH_BASE": GROUPS,
            "LDAP_GROUP_TYPE": "groupofnames",
            "LDAP_ROLE_GROUPS": f"radiologist={RADIOLOGISTS};technologist={TECHNOLOGISTS}",
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_slapd(workdir: Path) -> Directory:
    if not os.path.exists(SLAPD) or not shutil.which("ldapadd"):
        pytest.fail("slapd / ldapadd are not installed (apt-get install slapd ldap-utils; make test does it)")
    (workdir / "db").mkdir(parents=True)
    conf = workdir / "slapd.conf"
    conf.write_text(CONF.format(dir=workdir, suffix=SUFFIX, root_dn=ROOT_DN, root_pw=ROOT_PW))
    port = _free_port()
    uri = f"ldap://127.0.0.1:{port}"
    # -d 0: stay in the foreground (a child of the test run) without debug output.
    process = subprocess.Popen([SLAPD, "-f", str(conf), "-h", f"{uri}/", "-d", "0"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 15
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"slapd did not start: {process.stderr.read().decode(errors='replace')[-2000:]}")
        time.sleep(0.05)
    subprocess.run(["ldapadd", "-x", "-H", uri, "-D", ROOT_DN, "-w", ROOT_PW], input=LDIF.encode(),
                   check=True, capture_output=True)
    return Directory(uri=uri, process=process)


def stop_slapd(directory: Directory) -> None:
    directory.process.terminate()
    try:
        directory.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        directory.process.kill()
        directory.process.wait()
