"""The alert router (``pulse router``): retention alerts and VIP changes to chat robots, webhooks and e-mail."""
