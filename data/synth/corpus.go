package synth

import (
	"context"
	"fmt"
	"strconv"
	"strings"
)

// Document is one pretraining line (data's text format).
type Document struct {
	Text string `json:"text"`
}

// Corpus makes n pretraining documents of the tasks' world: stories whose counts change and
// are restated, arithmetic facts of the tasks' number range, lists of names with numbers that
// are later recalled, and plain sentences about people, places and things. It teaches the skills
// and the words the tasks need, but never in a task's question/answer format (no "How many ...
// now?", "What is the value of", "Answer:" or "The answer is"), so that fine-tuning on a task
// has something to add.
func Corpus(ctx context.Context, n int, seed uint64) ([]Document, error) {
	if n < 0 {
		return nil, fmt.Errorf("corpus: count %d is negative", n)
	}
	r := newRNG(seed)
	kinds := []func(*rng) string{storyDocument, storyDocument, equationDocument, equationDocument, listDocument, listDocument, worldDocument}
	out := make([]Document, 0, min(n, preallocLimit))
	for i := 0; i < n; i++ {
		if i%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		out = append(out, Document{Text: pick(r, kinds)(r)})
	}
	return out, nil
}

// storyDocument: people's counts change; the new counts are restated, sometimes with the sum.
func storyDocument(r *rng) string {
	k := r.between(1, 3)
	people := sample(r, names, k+2)
	kinds := sample(r, things, k)
	holders := make([]*holder, k)
	var s []string
	for i := range holders {
		holders[i] = &holder{name: people[i], thing: kinds[i], count: r.between(2, maxStartCount)}
		h := holders[i]
		s = append(s, fmt.Sprintf("%s has %d %s.", h.name, h.count, h.thing.form(h.count)))
	}
	for range r.between(2, 6) {
		h := pick(r, holders)
		before := h.count
		delta := h.change(r)
		s = append(s, eventSentence(r, h, delta, people[k:]))
		switch r.intn(3) {
		case 0:
			s = append(s, fmt.Sprintf("Now %s has %d %s.", h.name, h.count, h.thing.form(h.count)))
		case 1:
			s = append(s, fmt.Sprintf("Since %s, %s now has %d %s.", strings.TrimSuffix(stepText(before, delta), "."), h.name, h.count, h.thing.form(h.count)))
		}
	}
	var end []string
	for _, h := range holders {
		end = append(end, fmt.Sprintf("%s has %d %s", h.name, h.count, h.thing.form(h.count)))
	}
	s = append(s, "In the end, "+strings.Join(end, " and ")+".")
	return strings.Join(s, " ")
}

// equationDocument: facts of the addition/subtraction table the tasks use, alone or chained.
func equationDocument(r *rng) string {
	var s []string
	for range r.between(6, 14) {
		a := r.between(minCount, maxCount)
		h := &holder{count: a}
		d := h.change(r)
		fact := stepText(a, d)
		switch r.intn(4) {
		case 0:
			word := "plus"
			if d < 0 {
				word, d = "minus", -d
			}
			fact = fmt.Sprintf("%d %s %d is %d.", a, word, d, h.count)
		case 1:
			b := h.count
			d2 := h.change(r)
			fact = strings.TrimSuffix(fact, ".") + ", and " + stepText(b, d2)
		}
		s = append(s, fact)
	}
	return strings.Join(s, " ")
}

// listDocument: a list of names with numbers, then some of them recalled in a sentence.
func listDocument(r *rng) string {
	k := r.between(3, 12)
	keys := sample(r, names, k)
	values := sample(r, twoDigitNumbers, k)
	headers := []string{"Scores", "Room numbers", "Seats", "Tickets", "Lockers", "Ages"}
	var b strings.Builder
	b.WriteString(pick(r, headers))
	switch r.intn(3) {
	case 0: // one line, commas
		b.WriteString(": ")
		for i := range keys {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%s %d", keys[i], values[i])
		}
		b.WriteString(".")
	case 1:
		for i := range keys {
			fmt.Fprintf(&b, "\n- %s = %d", keys[i], values[i])
		}
	default:
		for i := range keys {
			fmt.Fprintf(&b, "\n%s: %d", keys[i], values[i])
		}
	}
	recalls := []string{"%s's number is %d.", "The number for %s is %d.", "%s has %d.", "For %s it is %d."}
	b.WriteString("\n")
	for j, i := range sample(r, indices(k), r.between(1, min(4, k))) {
		if j > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, pick(r, recalls), keys[i], values[i])
	}
	return b.String()
}

// worldDocument: where people are, where things lie, what they like, and counting.
func worldDocument(r *rng) string {
	var s []string
	for range r.between(3, 7) {
		name, t := pick(r, names), pick(r, things)
		switch r.intn(4) {
		case 0:
			s = append(s, fmt.Sprintf("%s is in %s.", name, pick(r, places)))
		case 1:
			s = append(s, fmt.Sprintf("The %s %s is on %s.", pick(r, colors), t.one, pick(r, furniture)))
		case 2:
			s = append(s, fmt.Sprintf("%s likes %s.", name, t.many))
		default:
			n := r.between(2, 9)
			counts := make([]string, n)
			for i := range counts {
				counts[i] = strconv.Itoa(i + 1)
			}
			s = append(s, fmt.Sprintf("%s counts the %s: %s. %s has %d %s.", name, t.many, strings.Join(counts, ", "), name, n, t.many))
		}
	}
	return strings.Join(s, " ")
}

func indices(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}
