package synth

// The vocabulary of the generated world, shared by the tasks and the pretraining corpus so that
// the base model has seen every word a task uses.

var names = []string{
	"Ava", "Ben", "Cal", "Dan", "Eva", "Fay", "Gus", "Hal", "Ian", "Jo", "Kim", "Leo",
	"Mia", "Ned", "Oli", "Pam", "Quin", "Ray", "Sam", "Tom", "Uma", "Vic", "Wes", "Zoe",
}

// thing is a countable object with its singular and plural forms.
type thing struct{ one, many string }

// form is the noun form that goes with count n.
func (t thing) form(n int) string {
	if n == 1 {
		return t.one
	}
	return t.many
}

var things = []thing{
	{"apple", "apples"}, {"pear", "pears"}, {"coin", "coins"}, {"book", "books"},
	{"marble", "marbles"}, {"stamp", "stamps"}, {"card", "cards"}, {"shell", "shells"},
	{"pencil", "pencils"}, {"egg", "eggs"}, {"cookie", "cookies"}, {"ball", "balls"},
}

var places = []string{
	"the garden", "the kitchen", "the park", "the shop", "the school", "the library",
	"the market", "the yard", "the hall", "the station",
}

var colors = []string{"red", "blue", "green", "yellow", "white", "black", "brown", "gray"}

var furniture = []string{"the table", "the shelf", "the chair", "the bed", "the desk", "the box"}

// gain and loss are the event phrasings of the arithmetic world: %[1]s the actor, %[2]d the
// amount, %[3]s the noun, %[4]s another person.
var (
	gainEvents = []string{
		"%[1]s buys %[2]d more %[3]s.",
		"%[1]s finds %[2]d more %[3]s.",
		"%[1]s gets %[2]d more %[3]s from %[4]s.",
		"%[1]s picks up %[2]d more %[3]s.",
	}
	lossEvents = []string{
		"%[1]s gives %[2]d %[3]s to %[4]s.",
		"%[1]s loses %[2]d %[3]s.",
		"%[1]s sells %[2]d %[3]s.",
	}
)
