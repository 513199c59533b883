"""The coordinator: device registry, durable announcements, delivery to agents, status."""
