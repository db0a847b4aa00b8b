# %systemd_preun cafe-streamd.service, written out: on removal (not on
# upgrade) the service is stopped and disabled. $1 is the number of
# installed versions after this one (0: removal).
if [ "$1" -eq 0 ]; then
  systemctl --no-reload disable --now cafe-streamd.service >/dev/null 2>&1 || :
fi
