// The virtual switch's receive side: each director's front-end queue is a bounded lock-free ring of messages (sub-
// requests: a request, its data descriptor, and the completion to answer). Any thread may send (a front-end thread
// for its director's front-end adapter, a control thread), only the thread holding the director's executor role
// receives. The ring is Vyukov's bounded queue: each cell carries a sequence number that says whether it is free for
// the sender at position p (sequence == p) or holds the message of position p (sequence == p + 1); a sender claims a
// position with one compare-exchange, the receiver needs none. Nothing is allocated after init.
import Synchronization

final class MessageRing: @unchecked Sendable {
    private let mask: Int
    private let sequences: UnsafeMutablePointer<Atomic<Int>>
    private let cells: UnsafeMutablePointer<SubRequest?>
    /// Next position a sender claims.
    private let tail = Atomic<Int>(0)
    /// Next position the receiver takes (written only by the role holder; atomic so status can read the depth).
    private let head = Atomic<Int>(0)
    let capacity: Int

    init(capacity requested: Int) {
        var capacity = 2
        while capacity < requested { capacity <<= 1 }
        self.capacity = capacity
        mask = capacity - 1
        sequences = .allocate(capacity: capacity)
        for i in 0..<capacity { (sequences + i).initialize(to: Atomic(i)) }
        cells = .allocate(capacity: capacity)
        cells.initialize(repeating: nil, count: capacity)
    }

    deinit {
        _ = sequences.deinitialize(count: capacity)
        sequences.deallocate()
        cells.deinitialize(count: capacity)
        cells.deallocate()
    }

    /// Sends `message`; false when the ring is full (the caller applies backpressure).
    @inline(__always)
    func send(_ message: SubRequest) -> Bool {
        var position = tail.load(ordering: .relaxed)
        while true {
            let sequence = sequences[position & mask].load(ordering: .acquiring)
            let difference = sequence &- position
            if difference == 0 {
                let (won, current) = tail.compareExchange(expected: position, desired: position &+ 1, ordering: .relaxed)
                if won { break }
                position = current
            } else if difference < 0 {
                return false
            } else {
                position = tail.load(ordering: .relaxed)
            }
        }
        cells[position & mask] = message
        // Sequentially consistent: a receiver that gives its role up and then looks again must see this message, or
        // the sender's own attempt to take the role must succeed (see Director.drain).
        sequences[position & mask].store(position &+ 1, ordering: .sequentiallyConsistent)
        return true
    }

    /// Takes the oldest message; nil when none is published. Only the executor-role holder calls this.
    @inline(__always)
    func receive() -> SubRequest? {
        let position = head.load(ordering: .relaxed)
        let sequence = sequences[position & mask].load(ordering: .acquiring)
        guard sequence == position &+ 1 else { return nil }
        let message = cells[position & mask]
        cells[position & mask] = nil
        sequences[position & mask].store(position &+ mask &+ 1, ordering: .releasing)
        head.store(position &+ 1, ordering: .relaxed)
        return message
    }

    /// Whether a message is published at the head (sequentially consistent: the other half of `send`'s store).
    @inline(__always)
    var hasMessage: Bool {
        let position = head.load(ordering: .relaxed)
        return sequences[position & mask].load(ordering: .sequentiallyConsistent) == position &+ 1
    }

    /// Whether a send would find no free cell now.
    var isFull: Bool { depth >= capacity }

    /// Messages sent and not yet received (approximate while senders run).
    var depth: Int { max(0, tail.load(ordering: .relaxed) &- head.load(ordering: .relaxed)) }

    /// Positions claimed so far: changes whenever a message is sent (the idle director thread watches it).
    var sent: Int { tail.load(ordering: .relaxed) }
}
