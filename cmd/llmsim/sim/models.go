package sim

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// modelObject is one entry of OpenAI's GET /v1/models list. created is a constant so the body is
// the same on every run.
type modelObject struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

type modelList struct {
	Object string        `json:"object"`
	Data   []modelObject `json:"data"`
}

func newModelObject(id string) modelObject {
	return modelObject{ID: id, Object: "model", OwnedBy: DefaultName}
}

func encodeModelList(models []string) []byte {
	list := modelList{Object: "list", Data: make([]modelObject, 0, len(models))}
	for _, m := range models {
		list.Data = append(list.Data, newModelObject(m))
	}
	body, err := json.Marshal(list)
	if err != nil {
		// Strings and ints always marshal; this is unreachable.
		return []byte(`{"object":"list","data":[]}`)
	}
	return body
}

// serveModel answers GET /v1/models/{id} the way OpenAI does: the model object, or 404.
func (h *handler) serveModel(w http.ResponseWriter, id string) {
	for _, m := range h.opts.Models {
		if m == id {
			body, err := json.Marshal(newModelObject(id))
			if err != nil {
				writeError(w, false, apiChat, http.StatusInternalServerError, err.Error(), "", "")
				return
			}
			writeRaw(w, http.StatusOK, "application/json", body)
			return
		}
	}
	writeError(w, false, apiChat, http.StatusNotFound,
		"The model "+strconv.Quote(id)+" does not exist", "model", "model_not_found")
}
