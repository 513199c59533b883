"""The device agent: verify announcements, apply them with Nix, report to the coordinator.

- procedure.py: the update procedure as a sans-IO state machine (states and transitions);
- verify.py: the checks an announcement must pass before anything happens;
- apply.py: the Updater, which runs the procedure with fleet.nix (download, activate, check,
  roll back) and persists every transition before reporting it;
- state.py: the durable local state (one fsync'd JSON file);
- switch_run.py: the record of a switch-to-configuration run (started / finished, its pid);
- recovery.py: the rules after a restart mid-activation (sans-IO; apply.py carries them out);
- revocations.py, witness.py: revocations and the audit checkpoint it keeps across restarts;
- worker.py: the Agent (mailbox of accepted announcements, retries, outbox);
- session.py: the connection to the coordinator with reconnects; dial.py: over the mesh.
See docs/agent.md.
"""
