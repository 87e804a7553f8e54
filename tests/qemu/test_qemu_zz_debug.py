import time
from qemu_world import GRIDEDGE_PIDS
def test_debug(make_unit, world):
    w = world(meters=8, speed=300, duration="1d")
    unit = make_unit(radio=w.sim.port)
    unit.boot()
    w.provision(unit)
    time.sleep(45)
    for c in ["tail -40 /var/log/messages", "ls -la /dev/ttyS* /data/gridedge", "cat /proc/tty/driver/serial", GRIDEDGE_PIDS, "ls -la /proc/$(%s | head -1)/fd" % GRIDEDGE_PIDS, "stty -F /dev/ttyS0 -a"]:
        print("###", c); print(unit.run(c)[1])
    assert 0
