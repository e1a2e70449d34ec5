"""Draft head, its mixture of experts, and the EaModel front end."""
