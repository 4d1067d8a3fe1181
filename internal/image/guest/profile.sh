export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export HOME=/root
PS1='\u@\h:\w# '
echo "shoal-tiny: root shell; 'poweroff' or 'reboot' when done."
