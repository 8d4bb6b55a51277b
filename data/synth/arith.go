package synth

import (
	"fmt"
	"strconv"
	"strings"
)

// Quantities of the arithmetic world stay in [minCount, maxCount] and change by at most
// maxAmount per event, so every worked step is a fact of a small addition/subtraction table the
// corpus teaches.
const (
	minCount      = 1
	maxCount      = 40
	maxAmount     = 9
	maxStartCount = 15
	lowCount      = 4
)

// holder is a person of an arithmetic story with the count of one kind of thing.
type holder struct {
	name  string
	thing thing
	count int
}

// change picks an event for h: a gain or a loss that keeps the count in range. It returns the
// signed amount and applies it.
func (h *holder) change(r *rng) int {
	canGain := h.count < maxCount
	// Losses only from counts above lowCount, so that small results do not pile up.
	canLose := h.count > lowCount
	gain := canGain && (!canLose || r.chance(1, 2))
	var delta int
	if gain {
		delta = r.between(1, min(maxAmount, maxCount-h.count))
	} else {
		delta = -r.between(1, min(maxAmount, h.count-minCount))
	}
	h.count += delta
	return delta
}

// eventSentence phrases a change of h's count by delta; bystanders are people outside the story
// who can receive or give things.
func eventSentence(r *rng, h *holder, delta int, bystanders []string) string {
	templates, amount := gainEvents, delta
	if delta < 0 {
		templates, amount = lossEvents, -delta
	}
	return fmt.Sprintf(pick(r, templates), h.name, amount, h.thing.form(amount), pick(r, bystanders))
}

func stepText(before, delta int) string {
	if delta >= 0 {
		return fmt.Sprintf("%d + %d = %d.", before, delta, before+delta)
	}
	return fmt.Sprintf("%d - %d = %d.", before, -delta, before+delta)
}

// generateArith makes a word problem: people with counts of things, Steps events that change
// the asked-about count, Distractors events that change the others', then the question. The
// problem is defined (key) by the asked-about person, thing, start count and changes.
func generateArith(r *rng, o Options) problem {
	others := 0
	switch {
	case o.Distractors > 2:
		others = 2
	case o.Distractors > 0:
		others = 1
	}
	people := sample(r, names, others+3) // the last two are bystanders
	kinds := sample(r, things, others+1)
	holders := make([]*holder, others+1)
	for i := range holders {
		holders[i] = &holder{name: people[i], thing: kinds[i], count: r.between(2, maxStartCount)}
	}
	bystanders := people[others+1:]
	target := holders[0]

	var sentences []string
	for _, i := range sample(r, []int{0, 1, 2}[:len(holders)], len(holders)) {
		h := holders[i]
		sentences = append(sentences, fmt.Sprintf("%s has %d %s.", h.name, h.count, h.thing.form(h.count)))
	}
	// Who acts in each event: Steps times the target, the distractor events spread over the
	// others, in a random interleaving (the target's own events keep their order).
	actors := make([]int, 0, o.Steps+o.Distractors)
	for range o.Steps {
		actors = append(actors, 0)
	}
	for i := range o.Distractors {
		actors = append(actors, 1+i%others)
	}
	actors = sample(r, actors, len(actors))

	start := target.count
	key := []string{target.name, target.thing.many, strconv.Itoa(start)}
	var steps []string
	for _, a := range actors {
		h := holders[a]
		before := h.count
		delta := h.change(r)
		sentences = append(sentences, eventSentence(r, h, delta, bystanders))
		if a == 0 {
			steps = append(steps, stepText(before, delta))
			key = append(key, strconv.Itoa(delta))
		}
	}
	sentences = append(sentences, fmt.Sprintf("How many %s does %s have now?", target.thing.many, target.name))
	answer := strconv.Itoa(target.count)
	completion := " " + answer
	if !o.AnswerOnly {
		completion = " " + strings.Join(steps, " ") + " The answer is " + answer + "."
	}
	return problem{
		key: strings.Join(key, "|"),
		ex: Example{
			Prompt:     strings.Join(sentences, " ") + "\nAnswer:",
			Completion: completion,
			Answer:     answer,
		},
	}
}

// generateLookup makes a list of Records "- name: value" lines with distinct two-digit values
// and asks for one name's value. The bullet puts a space before each name, so a name is the same
// token in the list and in the question. The problem is the whole list and the asked name.
func generateLookup(r *rng, o Options) problem {
	keys := sample(r, names, o.Records)
	values := sample(r, twoDigitNumbers, o.Records)
	asked := r.intn(o.Records)
	lines := make([]string, 0, o.Records+1)
	for i, k := range keys {
		lines = append(lines, fmt.Sprintf("- %s: %d", k, values[i]))
	}
	lines = append(lines, fmt.Sprintf("What is the value of %s?\nAnswer:", keys[asked]))
	prompt := strings.Join(lines, "\n")
	answer := strconv.Itoa(values[asked])
	return problem{key: prompt, ex: Example{Prompt: prompt, Completion: " " + answer, Answer: answer}}
}

var twoDigitNumbers = func() []int {
	out := make([]int, 0, 90)
	for v := 10; v <= 99; v++ {
		out = append(out, v)
	}
	return out
}()
