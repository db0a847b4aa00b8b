# %systemd_postun_with_restart cafe-streamd.service, written out: systemd
# forgets the old unit; on an upgrade a running service restarts into the
# new binary (try-restart: a stopped one stays stopped). $1 is the number
# of installed versions after this one (1 or more: an upgrade).
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -ge 1 ]; then
  systemctl try-restart cafe-streamd.service >/dev/null 2>&1 || :
fi
