# %systemd_post cafe-streamd.service, written out (cargo-generate-rpm has no
# rpm macros): systemd reads the new unit; on a first install the unit is
# set as the distribution's preset says (Amazon Linux: disabled until an
# operator enables it). $1 is the number of installed versions after this one.
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ]; then
  systemctl --no-reload preset cafe-streamd.service >/dev/null 2>&1 || :
fi
