// A value guarded by a pthread mutex, for the control plane. Synchronization.Mutex would do the same job, but its futex
// is invisible to ThreadSanitizer: every access it guards reads as a data race there (`make tsan` found two such
// false reports on the control lock). A pthread mutex is intercepted, so the sanitizer sees the locking. Same
// `withLock` shape as Mutex.
#if canImport(Glibc)
    import Glibc
#endif

public final class Locked<Value>: @unchecked Sendable {
    // The value lives behind a pointer, not in a stored property: a property's dynamic exclusivity check is an access
    // of its own that ThreadSanitizer sees outside the mutex (a zero-sized Void property is checked at the object's
    // address), and the mutex already makes the accesses exclusive.
    private let storage: UnsafeMutablePointer<Value>
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    public init(_ value: Value) {
        storage = .allocate(capacity: 1)
        storage.initialize(to: value)
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        storage.deinitialize(count: 1)
        storage.deallocate()
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    @inline(__always)
    public func withLock<Result, E: Error>(_ body: (inout Value) throws(E) -> Result) throws(E) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&storage.pointee)
    }

    /// `body` under the lock if no one holds it now; nil (and `body` not run) if someone does.
    @inline(__always)
    public func withLockIfAvailable<Result>(_ body: (inout Value) -> Result) -> Result? {
        guard pthread_mutex_trylock(mutex) == 0 else { return nil }
        defer { pthread_mutex_unlock(mutex) }
        return body(&storage.pointee)
    }
}
