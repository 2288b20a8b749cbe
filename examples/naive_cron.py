#!/usr/bin/env python3
"""The naive cron job a partner would write instead of basiq-health: standard library only.

    BASIQ_API_KEY=... python3 naive_cron.py BASE_URL USERS_FILE DB

Takes a token, then one user at a time (ids in USERS_FILE, one per line): GET
/users/{id}/connections and GET /users/{id}/jobs, one INSERT OR REPLACE per connection and
per job into the SQLite file DB (WAL, synchronous NORMAL), one transaction per user. Prints
{"users", "connections", "jobs"} as JSON at the end. The benchmark (`--vs-script`) runs it
as a whole process and compares its CPU with `basiq-health sweep`'s.
"""

import json
import os
import sqlite3
import sys
import urllib.parse
import urllib.request


def token(base, key):
    req = urllib.request.Request(
        base + "/token",
        data=urllib.parse.urlencode({"scope": "SERVER_ACCESS"}).encode(),
        headers={
            "Authorization": "Basic " + key,
            "basiq-version": "3.0",
            "Content-Type": "application/x-www-form-urlencoded",
        },
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)["access_token"]


def get(url, bearer):
    req = urllib.request.Request(url, headers={"Authorization": "Bearer " + bearer})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: BASIQ_API_KEY=... naive_cron.py BASE_URL USERS_FILE DB")
    base, users_file, db_path = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
    bearer = token(base, os.environ["BASIQ_API_KEY"])

    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS connections "
        "(id TEXT PRIMARY KEY, user_id TEXT, status TEXT, institution TEXT, body TEXT)"
    )
    db.execute(
        "CREATE TABLE IF NOT EXISTS jobs "
        "(id TEXT PRIMARY KEY, user_id TEXT, created TEXT, body TEXT)"
    )

    users = connections = jobs = 0
    with open(users_file) as f:
        for line in f:
            user = line.strip()
            if not user:
                continue
            conns = get(f"{base}/users/{user}/connections", bearer)
            user_jobs = get(f"{base}/users/{user}/jobs", bearer)
            db.execute("BEGIN")
            for c in conns.get("data") or []:
                db.execute(
                    "INSERT OR REPLACE INTO connections VALUES (?, ?, ?, ?, ?)",
                    (
                        c.get("id"),
                        user,
                        c.get("status"),
                        (c.get("institution") or {}).get("id"),
                        json.dumps(c),
                    ),
                )
                connections += 1
            for j in user_jobs.get("data") or []:
                db.execute(
                    "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?)",
                    (j.get("id"), user, j.get("created"), json.dumps(j)),
                )
                jobs += 1
            db.execute("COMMIT")
            users += 1
    db.close()
    print(json.dumps({"users": users, "connections": connections, "jobs": jobs}))


if __name__ == "__main__":
    main()
