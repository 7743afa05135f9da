// R2's receiver (`vsa replica receive`): for an asynchronous group made with `--apply r2`, a process next to R2's
// images that applies each delta set from the journal there, so a set crosses the link once (to the journal) where
// R1 applying it would send every byte twice. SRDF/A's R2 array applies its sets the same way.
//
// It owns the journal's stamp and nothing else of the journal (Journal.swift says who writes what). Each poll it
// reads the header; a pending set it has not applied is checked whole (every record, the set's checksum) and
// applied, the images flushed, and only then stamped as applied. While it applies it beats (the stamp's progress
// after every 4 MiB), so R1 can tell it from a receiver that is gone. Otherwise it stamps the nonce of the header it
// saw: R1 writes the images itself (a resync) only once the receiver has stamped its "resyncing" header, and the
// receiver, reading the header again after every set, applies nothing more until R1 writes "pending".
import ArrayModel
import SysPosix

public enum Receiver {
    /// Receives until `wait` says to stop (it waits up to the seconds given between polls; false: stop). `say`
    /// prints a line: each set applied, each problem once (a journal or image that stops answering, a set that fails
    /// its checks; the receiver goes on polling). Throws one line when receiving cannot start: a journal that does not
    /// answer or is not a vsa journal, or targets that are not the group's in create's order.
    public static func run(
        journal journalURI: String, images uris: [String], pollSeconds: Double = 0.005, wait: (Double) -> Bool, say: (String) -> Void
    ) throws(VSAError) {
        let journalImage = try RemoteImage(uri: journalURI, deadlineSeconds: 30)
        let images = try uris.map { u throws(VSAError) in try RemoteImage(uri: u, deadlineSeconds: 30) }
        let journal = Journal(journal: journalImage, images: images, group: "")
        defer { journal.release() }
        // The first header: a read that races R1's write of it fails its checksum, so a few polls are allowed.
        var first: JournalHeader?
        for attempt in 1...3 where first == nil {
            do { first = try journal.readHeader() } catch {
                guard attempt < 3, wait(pollSeconds * 10) else { throw error }
            }
        }
        guard let first else { return }
        try journal.checkShape(first)
        var stamp = try journal.readStamp() ?? ReceiverStamp()
        say(
            "receiving group \(first.group) (\(images.count) LUN\(images.count == 1 ? "" : "s")): R2 is \(first.state) at cycle \(first.cycle)"
                + (first.applier == .r2 ? "" : "; R1 applies this group's sets itself (created without --apply r2), so there is nothing to do until it does"))
        // A problem is said once it has lasted three polls (a header read while R1 writes it fails its checksum
        // once), and again only when it changes. A set that could not be applied is tried again after a pause (1 s,
        // doubling to 30 s) without a beat: R1 hears nothing, and past its deadline resyncs instead.
        var problem: (message: String, polls: Int)?
        var said: String?
        var failed: (nonce: UInt64, retryAt: Double, pause: Double)?
        while wait(pollSeconds) {
            do throws(VSAError) {
                let h = try journal.readHeader()
                try journal.checkShape(h)
                // Seen (idle: between sets), before a pending set of it is applied.
                if stamp.saw != h.nonce {
                    var next = stamp
                    next.saw = h.nonce
                    try write(next, over: &stamp, journal)
                }
                if h.applier == .r2 && h.state == .pending && stamp.applied != h.nonce
                    && (failed?.nonce != h.nonce || Posix.monotonicSeconds() >= failed!.retryAt)
                {
                    do throws(VSAError) {
                        let (_, blocks) = try journal.replay(h, markConsistent: false, beat: { try? write(stamp, over: &stamp, journal) })
                        var next = stamp
                        next.applied = h.nonce
                        next.appliedCycle = h.cycle
                        try write(next, over: &stamp, journal)
                        say("applied the delta set of cycle \(h.cycle) (\(blocks) blocks): R2 is the source as of its boundary")
                    } catch {
                        let pause = failed?.nonce == h.nonce ? min(30, failed!.pause * 2) : 1
                        failed = (h.nonce, Posix.monotonicSeconds() + pause, pause)
                        throw error
                    }
                    failed = nil
                    problem = nil
                    said = nil
                    continue
                }
                problem = nil
            } catch {
                let polls = problem?.message == error.message ? problem!.polls + 1 : 1
                problem = (error.message, polls)
                // A set that fails is said at once: it is read whole each time, not a passing glitch of a poll.
                if (polls >= 3 || failed != nil) && said != error.message {
                    say("\(error.message); trying again")
                    said = error.message
                }
            }
        }
    }

    /// Writes `next` as the stamp with its progress counted up (FUA on the journal), and only once the journal took
    /// it makes it the stamp here: a stamp that did not reach the journal is written again at the next poll.
    private static func write(_ next: ReceiverStamp, over stamp: inout ReceiverStamp, _ journal: Journal) throws(VSAError) {
        var next = next
        next.progress = stamp.progress &+ 1
        guard journal.writeStamp(next) else { throw VSAError("\(journal.journal.uri) did not take the receiver's stamp") }
        stamp = next
    }
}
