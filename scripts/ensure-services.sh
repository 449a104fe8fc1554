#!/usr/bin/env bash
# Installs (from Debian's packages) and starts what the test suite needs:
# PostgreSQL, Redis, dcmtk, Orthanc (+ DICOMweb plug-in), Chromium, npm (fetches the built-in viewer), socat (a TLS front), rsyslog with
# its TLS driver (an Audit Record Repository for the audit export tests), OpenLDAP's slapd and
# ldap-utils (the directory sign-in tests start their own slapd), and the headers that python-ldap
# builds against.  Idempotent.
# Used by `make test` and therefore by .ci/run.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

need=()
command -v pg_ctlcluster >/dev/null 2>&1 || need+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
[ -x /usr/bin/findscu ] || need+=(dcmtk)
[ -x /usr/sbin/Orthanc ] || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v npm >/dev/null 2>&1 || need+=(npm)
[ -x /usr/bin/socat ] || need+=(socat)
[ -x /usr/sbin/rsyslogd ] || need+=(rsyslog)
[ -e /usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so ] || [ -n "$(find /usr/lib -name lmnsd_gtls.so -print -quit 2>/dev/null)" ] || need+=(rsyslog-gnutls)
command -v pg_isready >/dev/null 2>&1 || need+=(postgresql-client)
[ -x /usr/sbin/slapd ] || need+=(slapd)
command -v ldapadd >/dev/null 2>&1 || need+=(ldap-utils)
[ -e /usr/include/ldap.h ] || need+=(libldap2-dev)
[ -e /usr/include/sasl/sasl.h ] || need+=(libsasl2-dev)
fresh_postgres=0
if [ ${#need[@]} -gt 0 ]; then
  echo "ensure-services: installing ${need[*]}"
  [[ " ${need[*]} " == *" postgresql "* ]] && fresh_postgres=1
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Orthanc's Debian package may start a system service on install; our tests run their own.
$SUDO service orthanc stop >/dev/null 2>&1 || true
# Likewise rsyslog: the tests start rsyslogd with their own configuration on their own ports.
# Likewise slapd: the tests start one of their own on a free port.
$SUDO service slapd stop >/dev/null 2>&1 || true

if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  echo "ensure-services: starting PostgreSQL"
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi
if [ "$fresh_postgres" = "1" ]; then
  # A fresh Debian cluster asks for a password on TCP: give postgres the one tests use.
  $SUDO su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\""
fi
pg_isready -h 127.0.0.1 -p 5432
# The database named by the test DATABASE_URL (pytest-django creates test_<name> beside it).
if ! PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = 'pacs'" | grep -q 1; then
  PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE pacs"
fi

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "ensure-services: starting Redis"
  $SUDO mkdir -p /var/lib/redis /var/log/redis
  $SUDO redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 1; done
fi
redis-cli -h 127.0.0.1 -p 6379 ping
