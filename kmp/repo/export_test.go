package repo

import "time"

// SetProgressEvery sets the least interval between a download's progress lines for a test and
// returns a function restoring it.
func SetProgressEvery(d time.Duration) func() {
	old := progressEvery
	progressEvery = d
	return func() { progressEvery = old }
}
