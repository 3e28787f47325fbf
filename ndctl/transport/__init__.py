"""The only place that speaks SSH (asyncssh) and turns argv lists into command lines."""
