"""The teachers' console of the PGI image (docs/console.md): a small web application served by nginx
at https://<server>/console/, beside the Tryton web client, with which teachers create, back up,
reset, restore and archive their classes' databases themselves, and the AMI manages the teachers'
accounts and reads the audit log.

Processes (systemd units in /etc/systemd/system):
- pgi-console.service: the web application (Flask on waitress, 127.0.0.1:8010 behind nginx), as
  the system user pgi_console, PostgreSQL role pgi_console (no superuser rights);
- pgi-console-worker.service: the job runner: long operations (a class of thirty, a restore) run
  there, one process per job, outside any request; the same user and role, with the file
  capabilities the database engine needs on the data disk (backups made by root), sandboxed;
- pgi-console (/usr/local/sbin): the command line (teacher accounts, audit log as JSON).

Everything the console knows lives in one SQLite file on the data disk (/srv/pgi/console), so a
new OS disk (a rollout) finds the accounts, classes, jobs and audit log as they were. Database
operations go through the image's one database engine (pgidb.py), as `pgi-db` does.
"""
