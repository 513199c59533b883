"""The device agent: verify announcements, apply them with Nix, report to the coordinator.

- procedure.py: the update procedure as a sans-IO state machine (states and transitions),
  owner of the agent's durable record;
- verify.py: the checks an announcement must pass before anything happens;
- updater.py: the Updater, which runs the procedure's effects with fleet.nix (download,
  activate, check, roll back) and persists every event before reporting it;
- state.py: saving and loading the record (one fsync'd JSON file);
- switch_run.py: the record of a switch-to-configuration run (started / finished, its pid);
- recovery.py: the rules after a restart mid-activation (sans-IO; updater.py carries them out);
- revocations.py, witness.py: revocations and the audit checkpoint it keeps across restarts;
- agent.py: the Agent (mailbox of accepted announcements, retries, `receive()` for what the
  coordinator sends); outbox.py: what the agent sends to the coordinator;
- session.py: the connection to the coordinator with reconnects; dial.py: over the mesh.
See docs/agent.md.
"""
