# What to do after installing chaos-agent without a configuration: one text for
# packaging/install.sh (which sources this file) and the deb/rpm maintainer scripts (which
# scripts/release.sh builds with this file in front of packaging/pkg/scripts.sh).
# POSIX sh; defines one function and runs nothing.

# chaos_agent_next_steps ETC_DIR STATE START_COMMAND
#   STATE: what was done ("installed but not started", "installed and enabled, but not
#   started"); START_COMMAND: step 4's first line.
chaos_agent_next_steps() {
    cat <<EOT

chaos-agent is $2: there is no configuration yet.
Next:
  1. On the control plane host:
       chaos-control agents add $(uname -n)      prints a one-time registration key
  2. Copy the control plane's CA certificate (the ca.pem \`chaos-control init\` wrote) to
       $1/ca.pem
  3. Save the [control_plane] section \`chaos-control init\` printed, with the key from step 1
     as registration_key, as
       $1/config.d/20-control.toml      (then: chmod 0600 $1/config.d/20-control.toml)
     Every other key is optional: $1/agent.toml.sample
  4. $3
     systemctl status chaos-agent
EOT
}
