// Why a shim: <sys/select.h> must precede <liburing.h> on this libc, fallocate's mode bits live in <linux/falloc.h>,
// and <sys/vfs.h> (fstatfs) tells memory-backed files, whose I/O io_uring cannot complete inline. The sqe's rw_flags
// sit in an anonymous union: a helper sets them.
#include <sys/select.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/vfs.h>
#include <liburing.h>

/* A write that is durable when it completes (RWF_DSYNC: FUA on devices that have it), without flushing the rest. */
static inline void vsa_sqe_make_durable(struct io_uring_sqe *sqe) { sqe->rw_flags = RWF_DSYNC; }
