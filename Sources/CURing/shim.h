// Why a shim: <sys/select.h> must precede <liburing.h> on this libc, fallocate's mode bits live in <linux/falloc.h>,
// and <sys/vfs.h> (fstatfs) tells memory-backed files, whose I/O io_uring cannot complete inline.
#include <sys/select.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/vfs.h>
#include <liburing.h>
